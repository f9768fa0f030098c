"""DecoderLM: cached decoding, padding, saving, conditions, MoE training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.models import DecoderLM
from tests.testing import check_config, to_numpy

SMALL = {"d_model": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 32, "dropout": 0.0}
B, T, V = 3, 6, 20


def token_batch():
    """Sequences of lengths 6, 4, 2 (BOS first), 0-padded."""
    ids = np.random.default_rng(0).integers(4, V, (B, T)).astype("int32")
    ids[:, 0] = 1
    ids[1, 4:] = 0
    ids[2, 2:] = 0
    return ids


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"position_encoding": "rope", "tie_embeddings": False, "norm_position": "post"},
        {
            "position_encoding": "learned",
            "max_length": 8,
            "num_experts": 3,
            "moe_every": 1,
            "experts_top_k": 1,
            "condition_dim": 4,
        },
    ],
)
def test_cached_decoding_equals_full_pass(kwargs):
    model = DecoderLM(V, **{**SMALL, **kwargs})
    ids = token_batch()
    inputs = {"token_ids": ids}
    condition = None
    if kwargs.get("condition_dim"):
        condition = np.random.default_rng(1).normal(size=(B, 4)).astype("float32")
        inputs["condition"] = condition
    full = to_numpy(model(inputs))
    assert full.shape == (B, T, V)
    cache = model.init_cache(B, T, condition=condition)
    steps = []
    for t in range(T):
        logits, cache = model.decode_step(ids[:, t], cache, tf.constant(t))
        steps.append(to_numpy(logits))
    real = ids != 0
    assert np.abs(np.stack(steps, axis=1)[real] - full[real]).max() < 1e-5
    for leaf in tf.nest.flatten(cache):
        assert leaf.shape[0] == B


def test_decode_step_in_tf_function_while_loop():
    model = DecoderLM(V, **SMALL)
    ids = token_batch()
    full = to_numpy(model({"token_ids": ids}))

    @tf.function
    def teacher_forced(ids):
        cache = model.init_cache(B, T)
        out = tf.TensorArray(tf.float32, T)

        def body(i, cache, out):
            logits, cache = model.decode_step(tf.gather(ids, i, axis=1), cache, i)
            return i + 1, cache, out.write(i, logits)

        _, _, out = tf.while_loop(lambda i, *_: i < T, body, (tf.constant(0), cache, out))
        return tf.transpose(out.stack(), (1, 0, 2))

    steps = to_numpy(teacher_forced(tf.constant(ids)))
    real = ids != 0
    assert np.abs(steps[real] - full[real]).max() < 1e-5


def test_padding_invariance():
    model = DecoderLM(V, **SMALL, num_experts=2, moe_every=1)
    ids = token_batch()
    out = to_numpy(model({"token_ids": ids}))
    out_longer = to_numpy(model({"token_ids": np.pad(ids, ((0, 0), (0, 5)))}))
    real = ids != 0
    assert np.abs(out_longer[:, :T][real] - out[real]).max() < 1e-5


def test_moe_model_learns_a_toy_task():
    """Next token = current + 1 (cycling over ids 4..11): the loss falls clearly."""
    keras.utils.set_random_seed(0)
    model = DecoderLM(
        12,
        d_model=16,
        num_heads=2,
        num_layers=1,
        ffn_dim=32,
        dropout=0.0,
        num_experts=4,
        experts_top_k=2,
        moe_every=1,
    )
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 8, (32, 1))
    ids = (4 + (starts + np.arange(9)[None]) % 8).astype("int32")
    inputs, labels = ids[:, :-1], ids[:, 1:]
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function
    def train_step(inputs, labels):
        with tf.GradientTape() as tape:
            logits = model({"token_ids": inputs}, training=True)
            task = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
            loss = task + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return task

    losses = [float(train_step(inputs, labels)) for _ in range(40)]
    assert len(model.moe_layers()) == 1
    assert losses[0] > 2.0  # chance level is log(12) = 2.48
    assert losses[-1] < 0.2 * losses[0], losses


def test_save_and_reload(tmp_path):
    model = DecoderLM(V, **SMALL, num_conditions=2, num_experts=2)
    inputs = {"token_ids": token_batch(), "condition": np.array([0, 1, 1], "int32")}
    expected = to_numpy(model(inputs))
    path = str(tmp_path / "lm.keras")
    model.save(path)
    np.testing.assert_array_equal(to_numpy(keras.saving.load_model(path)(inputs)), expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    model = DecoderLM(V, **SMALL, dtype=policy)
    logits = model({"token_ids": token_batch()})
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))
    step, cache = model.decode_step(token_batch()[:, 0], model.init_cache(B, T), 0)
    assert keras.backend.standardize_dtype(step.dtype) == "float32"
    assert keras.backend.standardize_dtype(cache["layers"][0]["self_key"].dtype) == policy[6:]


def test_tied_embeddings_save_a_table():
    tied, untied = DecoderLM(V, **SMALL), DecoderLM(V, **SMALL, tie_embeddings=False)
    tied.build(None)
    untied.build(None)
    assert untied.count_params() - tied.count_params() == 16 * V


def test_config_round_trip_and_bad_arguments():
    check_config(DecoderLM, {"vocab_size": V, **SMALL})
    with pytest.raises(
        ValueError, match="tie_embeddings must be a bool. Received: tie_embeddings=1"
    ):
        DecoderLM(V, tie_embeddings=1)
    with pytest.raises(
        ValueError, match="vocab_size must be a positive integer. Received: vocab_size=0"
    ):
        DecoderLM(0)
    with pytest.raises(ValueError, match="cache longer than the learned position table"):
        DecoderLM(V, **SMALL, position_encoding="learned", max_length=4).init_cache(1, 5)
