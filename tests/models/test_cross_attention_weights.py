"""`Seq2SeqTransformer.cross_attention_weights` and `decode(return_attention_scores=True)`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.models import Seq2SeqTransformer
from tests.testing import to_numpy

SMALL = {
    "d_model": 16,
    "num_heads": 2,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "ffn_dim": 32,
    "dropout": 0.3,  # on in training only: the method must run with training=False
    "attention_dropout": 0.3,
}


def batch(condition=None):
    """Sources of lengths 7, 4, 2; targets of lengths 6, 3, 5 (BOS first), 0-padded."""
    rng = np.random.default_rng(0)
    source = rng.integers(4, 30, (3, 7)).astype("int32")
    source[1, 4:] = 0
    source[2, 2:] = 0
    target = rng.integers(4, 40, (3, 6)).astype("int32")
    target[:, 0] = 1
    target[1, 3:] = 0
    target[2, 5:] = 0
    inputs = {"source_ids": source, "target_in_ids": target}
    if condition is not None:
        inputs["condition"] = condition
    return inputs


def patched_cross_attention(model, inputs, layer=-1):
    """The reference: the approach `kerastx.evaluate.cross_attention` used, wrapping the
    layer's `_compute_attention` for one `training=False` forward pass."""
    attention = model.decoder_layers[layer]._cross_attention
    original = attention._compute_attention
    captured = []

    def capture(*args, **kwargs):
        outputs, probabilities = original(*args, **kwargs)
        captured.append(probabilities)
        return outputs, probabilities

    attention._compute_attention = capture
    try:
        model(inputs, training=False)
    finally:
        del attention._compute_attention
    return np.asarray(tf.cast(captured[-1], tf.float32))


CONDITIONS = {
    "none": ({}, None),
    "ids": ({"num_conditions": 3}, np.array([0, 2, 1], "int32")),
    "vector": ({"condition_dim": 4}, np.random.default_rng(1).normal(size=(3, 4)).astype("f")),
}


@pytest.mark.parametrize("kind", sorted(CONDITIONS))
@pytest.mark.parametrize("layer", [-1, 0])
def test_equals_the_patched_capture(kind, layer):
    options, condition = CONDITIONS[kind]
    model = Seq2SeqTransformer(30, 40, **SMALL, **options)
    inputs = batch(condition)
    weights = model.cross_attention_weights(inputs, layer=layer)
    assert weights.dtype == "float32" and tuple(weights.shape) == (3, 2, 6, 7)
    np.testing.assert_allclose(
        to_numpy(weights), patched_cross_attention(model, inputs, layer), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind", sorted(CONDITIONS))
def test_rows_are_distributions_over_the_real_sources(kind):
    options, condition = CONDITIONS[kind]
    model = Seq2SeqTransformer(30, 40, **SMALL, **options)
    inputs = batch(condition)
    weights = to_numpy(model.cross_attention_weights(inputs))  # (B, N, T, S)
    real = inputs["source_ids"] != 0  # (B, S)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-5)  # every row, every head
    assert np.all(weights[~np.broadcast_to(real[:, None, None, :], weights.shape)] == 0.0)
    assert np.all(weights[np.broadcast_to(real[:, None, None, :], weights.shape)] > 0.0)


def test_the_condition_is_used():
    model = Seq2SeqTransformer(30, 40, **SMALL, num_conditions=3)
    first = model.cross_attention_weights(batch(np.array([0, 0, 0], "int32")))
    second = model.cross_attention_weights(batch(np.array([1, 1, 1], "int32")))
    assert not np.allclose(to_numpy(first), to_numpy(second))
    with pytest.raises(ValueError, match="needs a condition"):
        model.cross_attention_weights(batch())


def test_deterministic_in_a_tf_function_and_bad_layer():
    model = Seq2SeqTransformer(30, 40, **SMALL)
    inputs = batch()
    eager = to_numpy(model.cross_attention_weights(inputs))
    np.testing.assert_array_equal(to_numpy(model.cross_attention_weights(inputs)), eager)
    traced = tf.function(model.cross_attention_weights)(inputs)
    np.testing.assert_allclose(to_numpy(traced), eager, rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):
        model.cross_attention_weights(inputs, layer=2)


def test_float32_under_mixed_precision():
    policy = keras.DTypePolicy("mixed_bfloat16")
    model = Seq2SeqTransformer(30, 40, **SMALL, dtype=policy)
    inputs = batch()
    weights = model.cross_attention_weights(inputs)
    assert weights.dtype == "float32"
    np.testing.assert_array_equal(to_numpy(weights), patched_cross_attention(model, inputs))


def test_decode_returns_every_layers_scores_and_the_same_logits():
    model = Seq2SeqTransformer(30, 40, **SMALL)
    inputs = batch()
    state = model.encode(inputs["source_ids"])
    plain = model.decode(inputs["target_in_ids"], state)
    logits, scores = model.decode(inputs["target_in_ids"], state, return_attention_scores=True)
    np.testing.assert_array_equal(to_numpy(logits), to_numpy(plain))
    assert len(scores) == 2
    for layer_scores in scores:
        assert sorted(layer_scores) == ["cross_attention", "self_attention"]
        assert tuple(layer_scores["self_attention"].shape) == (3, 2, 6, 6)
        assert tuple(layer_scores["cross_attention"].shape) == (3, 2, 6, 7)
        causal = np.triu(np.ones((6, 6), bool), k=1)
        assert np.all(to_numpy(layer_scores["self_attention"])[..., causal] == 0.0)
