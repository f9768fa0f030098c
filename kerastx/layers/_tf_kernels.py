"""TensorFlow-only kernels behind backend-neutral layers (private): dropout, layer norm.

The layers call these only when `keras.backend.backend() == "tensorflow"`; every other
backend takes the plain Keras path.
"""

from __future__ import annotations

import tensorflow as tf


def _int32_seed(seed):
    """A Keras `SeedGenerator` value (int64 pair) as the int32 pair TF's stateless ops
    take, mapped as Keras maps it (`floormod` by int32 max - 1)."""
    if seed.dtype == tf.int32:
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


def dropout_16bit(inputs, threshold: int, seed):
    """Drops each element when its 16-bit uniform is below `threshold` (of 65536) and
    scales the rest by `65536 / (65536 - threshold)`.

    One `uint32` Philox draw gives two 16-bit uniforms (a bitcast), so the generator
    makes half as many numbers as a float-per-element dropout.

    Args:
        inputs: float tensor of any shape.
        threshold: int in [0, 65536). The drop probability is `threshold / 65536`.
        seed: int tensor `(2,)`, a `SeedGenerator.next()` value.

    Returns:
        a tensor of the shape and dtype of `inputs`.
    """
    inputs = tf.convert_to_tensor(inputs)
    size = tf.size(inputs)
    words = tf.random.stateless_uniform(
        [(size + 1) // 2], seed=_int32_seed(seed), minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]  # (2 * words,) -> (size,)
    keep = tf.reshape(halves >= tf.constant(threshold, tf.uint16), tf.shape(inputs))
    scale = (1 << 16) / ((1 << 16) - threshold)
    mask = tf.cast(keep, inputs.dtype) * tf.constant(scale, inputs.dtype)
    return inputs * mask


def layer_norm(inputs, gamma, beta, epsilon: float):
    """Layer normalization over the last axis with a hand-written gradient.

    The same function as `keras.ops.layer_normalization` (biased variance, float32
    compute); its gradient is the closed form
    `dx = inv * (g dy - mean(g dy) - x_hat * mean(g dy * x_hat))`, `dgamma = sum(dy *
    x_hat)`, `dbeta = sum(dy)`, which takes fewer passes over the activations than the
    gradient TensorFlow derives from the forward ops.

    Args:
        inputs: float tensor `(..., D)`.
        gamma: float `(D,)` or None (no scale).
        beta: float `(D,)` or None (no offset).
        epsilon: float added to the variance.

    Returns:
        float32 tensor `(..., D)`.
    """
    x = tf.cast(inputs, tf.float32)
    width = x.shape[-1]
    g = tf.ones([width], tf.float32) if gamma is None else tf.cast(gamma, tf.float32)
    b = tf.zeros([width], tf.float32) if beta is None else tf.cast(beta, tf.float32)
    return _layer_norm_kernel(x, g, b, tf.constant(epsilon, tf.float32))


@tf.custom_gradient
def _layer_norm_kernel(x, g, b, epsilon):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    inv = tf.math.rsqrt(variance + epsilon)
    normed = (x - mean) * inv

    def grad(dy):
        rows = tf.range(tf.rank(dy) - 1)
        dg = tf.reduce_sum(dy * normed, axis=rows)
        db = tf.reduce_sum(dy, axis=rows)
        scaled = dy * g
        dx = inv * (
            scaled
            - tf.reduce_mean(scaled, axis=-1, keepdims=True)
            - normed * tf.reduce_mean(scaled * normed, axis=-1, keepdims=True)
        )
        return dx, dg, db, None

    return normed * g + b, grad
