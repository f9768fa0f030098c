"""kerastx MultiHeadAttention: Keras equivalence, cache, RoPE, masks, dropout."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import MultiHeadAttention, RotaryEmbedding, masks
from tests.testing import run_layer_test, to_numpy

B, T, S, D, N, H = 3, 5, 6, 16, 4, 4


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = rng.normal(size=(B, S, D)).astype("float32")
    return query, value


def paired_layers(**kwargs):
    """A kerastx layer and a Keras layer holding the same weights."""
    ours = MultiHeadAttention(num_heads=N, key_dim=H, **kwargs)
    theirs = keras.layers.MultiHeadAttention(num_heads=N, key_dim=H, **kwargs)
    ours.build((None, None, D), (None, None, D))
    theirs.build((None, None, D), (None, None, D))
    theirs.set_weights([w * 1.0 for w in ours.get_weights()])
    return ours, theirs


def test_run_layer_test(data, tmp_path):
    query, value = data
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": N, "key_dim": H},
        {"query": query, "value": value},
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=8,
        tmp_path=tmp_path,
    )


def test_run_layer_test_rotary_self_attention(data, tmp_path):
    query, _ = data
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": N, "key_dim": H, "use_rotary_embedding": True, "dropout": 0.1},
        {"query": query, "value": query},
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=8,
        call_kwargs={"use_causal_mask": True},
        # Adding one vector to every key of a query shifts all its scores equally.
        allow_unchanged=("key/bias",),
        tmp_path=tmp_path,
    )


def test_equals_keras_without_mask(data):
    query, value = data
    ours, theirs = paired_layers()
    diff = np.abs(to_numpy(ours(query, value)) - to_numpy(theirs(query, value))).max()
    assert diff < 1e-6


def test_equals_keras_with_attention_mask(data):
    query, value = data
    ours, theirs = paired_layers()
    mask = np.random.default_rng(1).random((B, T, S)) > 0.4
    mask[:, :, 0] = True  # no fully blocked row here (see the next test)
    a = to_numpy(ours(query, value, attention_mask=mask))
    b = to_numpy(theirs(query, value, attention_mask=mask))
    assert np.abs(a - b).max() < 1e-6
    # The mask matters: without it the output differs.
    assert np.abs(a - to_numpy(ours(query, value))).max() > 1e-3


def test_equals_keras_with_padding_and_causal_masks(data):
    query, _ = data
    ours, theirs = paired_layers()
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    mask = masks.merge_masks(masks.key_padding_attention_mask(padding), masks.causal_mask(T))
    a = to_numpy(ours(query, query, attention_mask=mask))
    b = to_numpy(theirs(query, query, attention_mask=mask))
    assert np.abs(a - b).max() < 1e-6
    a = to_numpy(ours(query, query, use_causal_mask=True))
    b = to_numpy(theirs(query, query, use_causal_mask=True))
    assert np.abs(a - b).max() < 1e-6


def test_fully_blocked_row_gives_zero_attention_like_keras(data):
    # Keras's explicit-softmax path (taken with scores or dropout) zeroes a fully
    # blocked row; its fused dot_product_attention path does not. We always zero it.
    query, value = data
    ours, theirs = paired_layers()
    mask = np.ones((B, T, S), bool)
    mask[0, 2, :] = False
    a, a_scores = ours(query, value, attention_mask=mask, return_attention_scores=True)
    b, b_scores = theirs(query, value, attention_mask=mask, return_attention_scores=True)
    a, b = to_numpy(a), to_numpy(b)
    assert np.abs(a - b).max() < 1e-6
    assert np.abs(to_numpy(a_scores) - to_numpy(b_scores)).max() < 1e-6
    np.testing.assert_array_equal(to_numpy(a_scores)[0, :, 2], 0.0)
    bias = to_numpy(ours.output_dense.bias)
    np.testing.assert_allclose(a[0, 2], bias, atol=1e-7)


def test_scores_are_float32_softmax_rows(data):
    query, value = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H, dtype="mixed_bfloat16")
    _, scores = layer(query, value, return_attention_scores=True)
    assert scores.shape == (B, N, T, S)
    assert keras.backend.standardize_dtype(scores.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(keras.ops.cast(scores, "float32")).sum(-1), 1.0, atol=1e-2)


def test_growing_cache_equals_full_causal_pass(data):
    query, _ = data
    for rotary in (False, True):
        layer = MultiHeadAttention(num_heads=N, key_dim=H, use_rotary_embedding=rotary)
        full = to_numpy(layer(query, query, use_causal_mask=True))
        cache = {
            "key": np.zeros((B, T, N, H), "float32"),
            "value": np.zeros((B, T, N, H), "float32"),
        }
        steps = []
        for t in range(T):
            x = query[:, t : t + 1]
            out, cache = layer(x, x, cache=cache, cache_update_index=t, use_causal_mask=True)
            steps.append(to_numpy(out))
        assert np.abs(np.concatenate(steps, axis=1) - full).max() < 1e-5
        # The cache holds the (rotated) keys of every step.
        assert np.abs(to_numpy(cache["key"])).min(axis=(2, 3)).max() > 0


def test_cache_block_of_two_steps(data):
    query, _ = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H, use_rotary_embedding=True)
    full = to_numpy(layer(query, query, use_causal_mask=True))
    zeros = np.zeros((B, T, N, H), "float32")
    cache = {"key": zeros, "value": zeros}
    out0, cache = layer(
        query[:, :2], query[:, :2], cache=cache, cache_update_index=0, use_causal_mask=True
    )
    out1, cache = layer(
        query[:, 2:4], query[:, 2:4], cache=cache, cache_update_index=2, use_causal_mask=True
    )
    np.testing.assert_allclose(to_numpy(out0), full[:, :2], atol=1e-5)
    np.testing.assert_allclose(to_numpy(out1), full[:, 2:4], atol=1e-5)


def test_static_cross_attention_cache(data):
    query, value = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H)
    padding = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    mask = masks.key_padding_attention_mask(padding)
    full = to_numpy(layer(query, value, attention_mask=mask))
    cache = layer.compute_cache(value)
    assert tuple(cache["key"].shape) == (B, S, N, H)
    out, same = layer(query, cache=cache, attention_mask=mask)
    for name in ("key", "value"):
        np.testing.assert_array_equal(to_numpy(same[name]), to_numpy(cache[name]))
    assert np.abs(to_numpy(out) - full).max() < 1e-6


def test_cache_under_tf_function_and_xla(data):
    query, _ = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H)
    full = to_numpy(layer(query, query, use_causal_mask=True))

    @tf.function(jit_compile=True)
    def run(x):
        zeros = tf.zeros((B, T, N, H))

        def body(t, cache, outputs):
            step = tf.gather(x, [t], axis=1)
            out, cache = layer(step, step, cache=cache, cache_update_index=t, use_causal_mask=True)
            return t + 1, cache, outputs.write(t, out[:, 0])

        _, _, outputs = tf.while_loop(
            lambda t, *_: t < T,
            body,
            (tf.constant(0), {"key": zeros, "value": zeros}, tf.TensorArray(tf.float32, T)),
        )
        return tf.transpose(outputs.stack(), (1, 0, 2))

    assert np.abs(to_numpy(run(query)) - full).max() < 1e-5


def test_rotary_matches_explicit_rotation(data):
    query, _ = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H, use_rotary_embedding=True)
    plain = MultiHeadAttention(num_heads=N, key_dim=H)
    layer.build((None, None, D))
    plain.build((None, None, D))
    plain.set_weights(layer.get_weights())
    _, scores = layer(query, query, return_attention_scores=True)
    q = RotaryEmbedding()(plain.query_dense(query))
    k = RotaryEmbedding()(plain.key_dense(query))
    logits = np.einsum("btnh,bsnh->bnts", to_numpy(q), to_numpy(k)) / np.sqrt(H)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(to_numpy(scores), expected, atol=1e-6)


def test_training_flag_reaches_attention_dropout(data):
    query, value = data
    layer = MultiHeadAttention(num_heads=N, key_dim=H, dropout=0.5, seed=1)
    inference = to_numpy(layer(query, value, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(query, value)))
    training = to_numpy(layer(query, value, training=True))
    assert np.abs(training - inference).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_heads": 0, "key_dim": 4},
            "num_heads must be a positive integer. Received: num_heads=0",
        ),
        (
            {"num_heads": 2, "key_dim": -1},
            "key_dim must be a positive integer. Received: key_dim=-1",
        ),
        (
            {"num_heads": 2, "key_dim": 4, "dropout": 1.5},
            "dropout must be a float in [0, 1). Received: dropout=1.5",
        ),
        (
            {"num_heads": 2, "key_dim": 3, "use_rotary_embedding": True},
            "even key_dim. Received: key_dim=3",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(
        ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        MultiHeadAttention(**kwargs)


def test_cache_index_without_cache_is_an_error(data):
    query, value = data
    with pytest.raises(ValueError, match="cache_update_index needs a cache"):
        MultiHeadAttention(num_heads=N, key_dim=H)(query, value, cache_update_index=0)
