"""TokenEmbedding: lookup, tied and untied float32 logits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import TokenEmbedding
from tests.testing import run_layer_test, to_numpy

IDS = np.array([[1, 5, 9, 0], [3, 3, 0, 0]], "int32")
HIDDEN = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")


def test_run_layer_test_lookup(tmp_path):
    run_layer_test(
        TokenEmbedding,
        {"vocab_size": 12, "embedding_dim": 8, "use_output_bias": False},
        {"inputs": IDS},
        expected_output_shape=(2, 4, 8),
        expected_num_trainable_weights=1,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_run_layer_test_logits(tie, tmp_path):
    run_layer_test(
        TokenEmbedding,
        {"vocab_size": 12, "embedding_dim": 8, "tie_weights": tie},
        {"inputs": HIDDEN},
        call_kwargs={"reverse": True},
        expected_output_shape=(2, 4, 12),
        expected_num_trainable_weights=2 if tie else 3,
        mixed_output_dtype="float32",  # logits stay float32
        # Untied: the embedding matrix is not read when projecting.
        run_training_check=tie,
        tmp_path=tmp_path,
    )


def test_lookup_and_tied_logits_values():
    layer = TokenEmbedding(12, 8)
    out = to_numpy(layer(IDS))
    table = to_numpy(layer.embeddings)
    np.testing.assert_array_equal(out, table[IDS])
    logits = to_numpy(layer(HIDDEN, reverse=True))
    np.testing.assert_allclose(logits, HIDDEN @ table.T + to_numpy(layer.output_bias), atol=1e-5)


def test_logits_are_float32_from_float32_weights_under_mixed_precision():
    layer = TokenEmbedding(12, 8, dtype="mixed_bfloat16")
    out = layer(IDS)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    logits = layer(HIDDEN, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Hidden states arrive in bfloat16 (the layer casts its inputs), but the table is
    # used in float32: the logits equal that float32 product.
    hidden = to_numpy(keras.ops.cast(keras.ops.cast(HIDDEN, "bfloat16"), "float32"))
    expected = hidden @ to_numpy(layer.embeddings).T
    np.testing.assert_allclose(to_numpy(logits), expected, atol=1e-5)


def test_bad_vocab_size():
    with pytest.raises(
        ValueError, match="vocab_size must be a positive integer. Received: vocab_size=0"
    ):
        TokenEmbedding(0, 8)


# -- the output projection at real sizes (issue 11) ---------------------------------------
#
# The tied projection was `einsum("...d,vd->...v")`; TensorFlow's gradient of that einsum
# builds a (B, T, V, D) tensor before summing over positions (33 GB at B*T = 4096, V = 8k,
# D = 256). The projection must cost what an untied dense layer costs, with the same
# numbers as before.


def _reference(hidden, table, bias, direction):
    """float64 logits and the gradients of `sum(logits * direction)`, in closed form."""
    h = np.asarray(hidden, np.float64)
    e = np.asarray(table, np.float64)
    w = np.asarray(direction, np.float64)
    logits = h @ e.T + bias
    flat_w = w.reshape(-1, e.shape[0])
    flat_h = h.reshape(-1, e.shape[1])
    return {
        "logits": logits,
        "hidden": w @ e,  # (..., D)
        "table": flat_w.T @ flat_h,  # (V, D): summed over every position
        "bias": flat_w.sum(0),
    }


def _einsum_logits(hidden, table, bias):
    """The implementation before issue 11, kept as the numerical reference."""
    return tf.einsum("...d,vd->...v", tf.cast(hidden, tf.float32), table) + bias


def _projection_grads(layer, hidden, direction, jit_compile, fn=None):
    """Logits and gradients (hidden, table or kernel, bias) of `sum(logits * direction)`."""
    weights = [layer.embeddings if layer.tie_weights else layer.output_kernel, layer.output_bias]

    def step(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            logits = layer(h, reverse=True) if fn is None else fn(h)
            objective = tf.reduce_sum(logits * direction)
        return [logits, *tape.gradient(objective, [h, *weights])]

    return [
        to_numpy(tf.convert_to_tensor(x))
        for x in tf.function(step, jit_compile=jit_compile)(tf.constant(hidden))
    ]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 8), (7, 8)])
def test_tied_projection_equals_reference_and_einsum(policy, jit_compile, shape):
    rng = np.random.default_rng(1)
    layer = TokenEmbedding(11, 8, dtype=policy)
    layer.build()
    layer.output_bias.assign(rng.normal(size=11).astype("float32"))
    hidden = rng.normal(size=shape).astype("float32")
    direction = rng.normal(size=shape[:-1] + (11,)).astype("float32")
    logits, d_hidden, d_table, d_bias = _projection_grads(layer, hidden, direction, jit_compile)
    # The layer sees its input in the compute dtype (Keras autocasting), as in a model.
    seen = to_numpy(keras.ops.cast(keras.ops.cast(hidden, layer.compute_dtype), "float32"))
    table, bias = to_numpy(layer.embeddings), to_numpy(layer.output_bias)
    want = _reference(seen, table, bias, direction)
    assert logits.dtype == np.float32 and logits.shape == shape[:-1] + (11,)
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_table, want["table"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_bias, want["bias"], rtol=1e-5, atol=1e-5)
    # The gradient reaching the hidden states is rounded to the compute dtype.
    tol = {"float32": 1e-5, "mixed_bfloat16": 2e-2, "mixed_float16": 2e-3}[policy]
    np.testing.assert_allclose(d_hidden, want["hidden"], rtol=tol, atol=tol)
    # Unchanged numerics: the einsum implementation gives the same logits and gradients.
    old = _projection_grads(
        layer,
        seen,
        direction,
        jit_compile,
        fn=lambda h: _einsum_logits(h, layer.embeddings, layer.output_bias),
    )
    for new_value, old_value in zip((logits, d_table, d_bias), (old[0], old[2], old[3])):
        np.testing.assert_allclose(new_value, old_value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_untied_projection_equals_reference(jit_compile):
    rng = np.random.default_rng(2)
    layer = TokenEmbedding(11, 8, tie_weights=False)
    layer.build()
    hidden = rng.normal(size=(3, 5, 8)).astype("float32")
    direction = rng.normal(size=(3, 5, 11)).astype("float32")
    logits, d_hidden, d_kernel, d_bias = _projection_grads(layer, hidden, direction, jit_compile)
    want = _reference(hidden, to_numpy(layer.output_kernel).T, 0.0, direction)
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_hidden, want["hidden"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_kernel, want["table"].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_bias, want["bias"], rtol=1e-5, atol=1e-5)


def test_projection_with_unknown_batch_and_time_dimensions():
    layer = TokenEmbedding(11, 8)
    layer.build()
    fn = tf.function(
        lambda h: layer(h, reverse=True),
        input_signature=[tf.TensorSpec([None, None, 8], tf.float32)],
    )
    out = fn(tf.constant(HIDDEN))
    np.testing.assert_allclose(
        to_numpy(out), HIDDEN @ to_numpy(layer.embeddings).T, rtol=1e-5, atol=1e-5
    )


def _step_peak_bytes(fn, *args):
    """TensorFlow's peak allocated CPU memory of one call of `fn`, after a warm-up call."""
    fn(*args)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn(*args)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


@pytest.mark.parametrize(
    "tie,policy,jit_compile",
    [
        (True, "float32", False),
        (False, "float32", False),
        (True, "float32", True),
        (True, "mixed_bfloat16", False),
        (True, "mixed_float16", True),
    ],
)
def test_projection_gradient_memory_is_that_of_a_dense_layer(tie, policy, jit_compile):
    # B*T = 256 positions, V = 2000, D = 128: logits 2 MB, table 1 MB; a (B, T, V, D)
    # gradient intermediate would be 262 MB (the einsum took 539 MB).
    b, t, v, d = 16, 16, 2000, 128
    layer = TokenEmbedding(v, d, tie_weights=tie, dtype=policy)
    layer.build()
    weight = layer.embeddings if tie else layer.output_kernel
    hidden = tf.random.stateless_normal((b, t, d), seed=(0, 1))

    @tf.function(jit_compile=jit_compile)
    def step(h):
        with tf.GradientTape() as tape:
            tape.watch(h)
            objective = tf.reduce_sum(tf.nn.log_softmax(layer(h, reverse=True)))
        return tape.gradient(objective, [h, weight])

    peak = _step_peak_bytes(step, hidden)
    logits_bytes, weight_bytes = b * t * v * 4, v * d * 4
    # Logits, their gradient and log-softmax, the weight gradient: a few of each.
    assert peak <= 4 * logits_bytes + 3 * weight_bytes, (peak, logits_bytes, weight_bytes)
