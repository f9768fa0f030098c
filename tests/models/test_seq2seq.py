"""Seq2SeqTransformer: cached decoding, padding, parameters, saving, MoE, conditions."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.models import Seq2SeqTransformer
from tests.testing import check_config, to_numpy

SMALL = {
    "d_model": 16,
    "num_heads": 2,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "ffn_dim": 32,
    "dropout": 0.0,
}
B, S, T = 3, 7, 6


def batch(seed=0, vs=30, vt=40):
    """Sources of lengths 7, 4, 2 and targets of lengths 6, 3, 5 (BOS first), 0-padded."""
    rng = np.random.default_rng(seed)
    source = rng.integers(4, vs, (B, S)).astype("int32")
    source[1, 4:] = 0
    source[2, 2:] = 0
    target = rng.integers(4, vt, (B, T)).astype("int32")
    target[:, 0] = 1
    target[1, 3:] = 0
    target[2, 5:] = 0
    return source, target


def cached_logits(model, source, target, condition=None, max_length=T):
    state = model.encode(source)
    cache = model.init_cache(state, max_length, condition=condition)
    steps = []
    for t in range(target.shape[1]):
        logits, cache = model.decode_step(target[:, t], cache, tf.constant(t))
        steps.append(to_numpy(logits))
    return np.stack(steps, axis=1), cache


VARIANTS = {
    "base": {},
    "rope_post_rms_tied": {
        "position_encoding": "rope",
        "norm_position": "post",
        "norm": "rmsnorm",
        "share_embeddings": "target_output",
        "activation": "gelu",
    },
    "learned_moe_condition_id": {
        "position_encoding": "learned",
        "max_length": 16,
        "num_experts": 4,
        "moe_every": 1,
        "expert_capacity_factor": 1.0,  # tight: drops happen, routing must still agree
        "num_conditions": 3,
        "activation": "swiglu",
    },
    "condition_vector_shared": {"condition_dim": 5, "share_embeddings": "all"},
}


def condition_for(kwargs):
    if kwargs.get("num_conditions"):
        return np.array([0, 2, 1], "int32")
    if kwargs.get("condition_dim"):
        return np.random.default_rng(3).normal(size=(B, kwargs["condition_dim"])).astype("float32")
    return None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_decoding_equals_full_pass(name):
    kwargs = VARIANTS[name]
    vt = 30 if kwargs.get("share_embeddings") == "all" else 40
    model = Seq2SeqTransformer(30, vt, **{**SMALL, **kwargs})
    source, target = batch(vt=vt)
    condition = condition_for(kwargs)
    inputs = {"source_ids": source, "target_in_ids": target}
    if condition is not None:
        inputs["condition"] = condition
    full = to_numpy(model(inputs))
    assert full.shape == (B, T, vt) and full.dtype == np.float32
    if kwargs.get("num_experts"):
        # Capacity is tight: some assignments are dropped, yet the cache agrees.
        assert float(model.moe_stats()["moe/tokens_dropped"]) > 0
    steps, cache = cached_logits(model, source, target, condition)
    real = target != 0
    assert np.abs(steps[real] - full[real]).max() < 1e-5
    # Every cache leaf is batch-major.
    for leaf in tf.nest.flatten(cache):
        assert leaf.shape[0] == B


def test_condition_reaches_the_decoder():
    model = Seq2SeqTransformer(30, 40, **SMALL, num_conditions=3)
    source, target = batch()
    a = to_numpy(
        model({"source_ids": source, "target_in_ids": target, "condition": np.zeros(3, "int32")})
    )
    b = to_numpy(
        model({"source_ids": source, "target_in_ids": target, "condition": np.ones(3, "int32")})
    )
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(ValueError, match="needs a condition"):
        model({"source_ids": source, "target_in_ids": target})
    # The encoder state can carry the condition to init_cache.
    state = model.encode(source, condition=np.ones(3, "int32"))
    cache = model.init_cache(state, T)
    logits, _ = model.decode_step(target[:, 0], cache, 0)
    np.testing.assert_allclose(to_numpy(logits), b[:, 0], atol=1e-5)


def test_padding_invariance():
    model = Seq2SeqTransformer(30, 40, **SMALL, num_experts=4, moe_every=1)
    source, target = batch()
    out = to_numpy(model({"source_ids": source, "target_in_ids": target}))
    longer_source = np.pad(source, ((0, 0), (0, 4)))
    longer_target = np.pad(target, ((0, 0), (0, 3)))
    out_longer = to_numpy(model({"source_ids": longer_source, "target_in_ids": longer_target}))
    real = target != 0
    assert np.abs(out_longer[:, :T][real] - out[real]).max() < 1e-5


def test_greedy_decoding_in_xla_while_loop_equals_eager():
    small = {**SMALL, "num_encoder_layers": 1, "num_decoder_layers": 1}
    model = Seq2SeqTransformer(30, 40, **small, position_encoding="learned", max_length=8)
    source, _ = batch()
    state = model.encode(source)
    steps = 6

    def greedy(state):
        cache = model.init_cache(state, steps)
        tokens = tf.TensorArray(tf.int32, steps)

        def body(i, token, cache, tokens):
            logits, cache = model.decode_step(token, cache, i)
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            return i + 1, token, cache, tokens.write(i, token)

        _, _, _, tokens = tf.while_loop(
            lambda i, *_: i < steps, body, (tf.constant(0), tf.fill([B], 1), cache, tokens)
        )
        return tf.transpose(tokens.stack())

    eager = to_numpy(greedy(state))
    compiled = to_numpy(tf.function(greedy, jit_compile=True)(state))
    np.testing.assert_array_equal(compiled, eager)


def test_embeddings_are_scaled_by_sqrt_d_model():
    model = Seq2SeqTransformer(30, 40, **{**SMALL, "num_encoder_layers": 1})
    model.build(None)
    ids = np.array([[5, 6, 0]], "int32")
    table = to_numpy(model.source_embedding.embeddings)
    positions = to_numpy(model.source_positions(np.zeros((1, 3, 16), "float32")))
    embedded = to_numpy(
        model._embed(model.source_embedding, model.source_positions, model.source_dropout, ids)
    )
    np.testing.assert_allclose(embedded, table[ids] * math.sqrt(16) + positions, atol=1e-6)


def test_training_flag_reaches_dropout():
    model = Seq2SeqTransformer(30, 40, **{**SMALL, "dropout": 0.3})
    source, target = batch()
    inputs = {"source_ids": source, "target_in_ids": target}
    inference = to_numpy(model(inputs))
    np.testing.assert_array_equal(inference, to_numpy(model(inputs, training=False)))
    assert np.abs(to_numpy(model(inputs, training=True)) - inference).max() > 1e-3


def transformer_base_parameters(vocab, d, ffn, encoder_layers, decoder_layers):
    attention = 4 * (d * d + d)  # query, key, value, output: kernel + bias
    feed_forward = (d * ffn + ffn) + (ffn * d + d)
    norm = 2 * d  # gamma + beta
    encoder_layer = attention + feed_forward + 2 * norm
    decoder_layer = 2 * attention + feed_forward + 3 * norm
    final_norms = 2 * norm  # pre-norm: one after each stack
    embeddings = vocab * d + vocab  # one shared table + output bias (sinusoidal: no weights)
    return (
        embeddings + encoder_layers * encoder_layer + decoder_layers * decoder_layer + final_norms
    )


def test_transformer_base_parameter_count():
    model = Seq2SeqTransformer(
        37000,
        37000,
        d_model=512,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        ffn_dim=2048,
        position_encoding="sinusoidal",
        share_embeddings="all",
    )
    model.build(None)
    expected = transformer_base_parameters(37000, 512, 2048, 6, 6)
    assert expected == 63_121_544  # the figure in the model docstring
    assert model.count_params() == expected


def test_untied_embeddings_add_their_tables():
    shared = Seq2SeqTransformer(30, 30, **SMALL, share_embeddings="all")
    target_output = Seq2SeqTransformer(30, 30, **SMALL, share_embeddings="target_output")
    untied = Seq2SeqTransformer(30, 30, **SMALL, share_embeddings="none")
    for model in (shared, target_output, untied):
        model.build(None)
    assert target_output.count_params() - shared.count_params() == 30 * 16
    assert untied.count_params() - target_output.count_params() == 16 * 30


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_experts": 2, "experts_top_k": 1, "condition_dim": 3, "position_encoding": "rope"},
        {"share_embeddings": "all", "position_encoding": "learned", "max_length": 8},
    ],
)
def test_save_and_reload(kwargs, tmp_path):
    vocab = 30 if kwargs.get("share_embeddings") == "all" else 40
    model = Seq2SeqTransformer(30, vocab, **SMALL, **kwargs)
    source, target = batch(vt=vocab)
    inputs = {"source_ids": source, "target_in_ids": target}
    if kwargs.get("condition_dim"):
        inputs["condition"] = np.ones((B, 3), "float32")
    expected = to_numpy(model(inputs))
    path = str(tmp_path / "seq2seq.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(reloaded(inputs)), expected)
    assert reloaded.get_config() == model.get_config()
    assert reloaded.count_params() == model.count_params()
    state = reloaded.encode(source, condition=inputs.get("condition"))
    logits, _ = reloaded.decode_step(target[:, 0], reloaded.init_cache(state, T), 0)
    np.testing.assert_allclose(to_numpy(logits), expected[:, 0], atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    model = Seq2SeqTransformer(30, 40, **SMALL, num_experts=2, dtype=policy)
    source, target = batch()
    logits = model({"source_ids": source, "target_in_ids": target})
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))
    state = model.encode(source)
    assert keras.backend.standardize_dtype(state["memory"].dtype) == policy.split("_")[1]
    step_logits, _ = model.decode_step(target[:, 0], model.init_cache(state, T), 0)
    assert keras.backend.standardize_dtype(step_logits.dtype) == "float32"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in model.weights)


def test_moe_aux_losses_reach_a_custom_tf_function_train_step():
    model = Seq2SeqTransformer(30, 40, **SMALL, num_experts=4, moe_every=1)
    source, target = batch()
    inputs = {"source_ids": source, "target_in_ids": target}
    model(inputs)
    routers = [layer._router.kernel for layer in model.moe_layers()]
    assert len(routers) == 4  # every layer of both stacks

    @tf.function
    def aux_gradients(inputs):
        model(inputs, training=True)  # an earlier call in the step: its losses are dropped
        with tf.GradientTape() as tape:
            model(inputs, training=True)
            aux = sum(model.losses)  # as the trainer does: task_loss + sum(model.losses)
        count = tf.constant(len(model.losses))
        return aux, count, tape.gradient(aux, routers), model.moe_stats()

    aux, count, gradients, stats = aux_gradients(inputs)
    assert int(count) == 8  # balance + z-loss per MoE layer, from the last call only
    for gradient in gradients:
        assert np.abs(to_numpy(gradient)).max() > 0
    model(inputs)
    eager = [float(v) for v in model.losses]
    assert len(eager) == 8
    assert float(aux) == pytest.approx(sum(eager), rel=1e-5)
    real = int((source != 0).sum() + (target != 0).sum())
    assert float(stats["moe/tokens_routed"]) == 2 * 2 * real  # top-2, two layers per stack


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"d_model": 10, "num_heads": 4},
            "d_model must be divisible by num_heads. Received: d_model=10, num_heads=4",
        ),
        ({"share_embeddings": "all"}, "share_embeddings='all' needs equal vocabulary sizes"),
        ({"share_embeddings": "some"}, "share_embeddings must be one of"),
        (
            {"num_conditions": 2, "condition_dim": 3},
            "At most one of num_conditions and condition_dim",
        ),
        ({"position_encoding": "alibi"}, "position_encoding must be one of"),
        ({"moe_every": 0}, "moe_every must be a positive integer. Received: moe_every=0"),
        ({"num_encoder_layers": 0}, "num_encoder_layers must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Seq2SeqTransformer(30, 40, **kwargs)


def test_config_round_trip():
    check_config(Seq2SeqTransformer, {"source_vocab_size": 30, "target_vocab_size": 40, **SMALL})
