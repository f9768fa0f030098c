"""LayerNormalization: the closed-form gradient against Keras's layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers.normalization import LayerNormalization
from tests.testing import to_numpy


def _pair(shape, **kwargs):
    rng = np.random.default_rng(0)
    ours, theirs = LayerNormalization(**kwargs), keras.layers.LayerNormalization(**kwargs)
    for layer in (ours, theirs):
        layer.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        value = rng.uniform(0.5, 1.5, size=a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, theirs


def _value_and_grads(layer, x, w):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        objective = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    return [y, *tape.gradient(objective, [x, *layer.trainable_weights])]


@pytest.mark.parametrize(
    "shape, kwargs, fast",
    [
        ((2, 5, 8), {"epsilon": 1e-6}, True),
        ((6, 16), {}, True),
        ((2, 3, 4, 8), {"epsilon": 1e-3}, True),
        ((2, 5, 8), {"axis": 1}, False),  # not the last axis: Keras's path
        ((2, 5, 8), {"center": False, "scale": False}, True),
    ],
)
def test_values_and_gradients_match_keras(shape, kwargs, fast):
    ours, theirs = _pair(shape, **kwargs)
    assert ours._fast is fast
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, size=shape).astype("float32"))
    w = tf.constant(rng.normal(size=shape).astype("float32"))
    for a, b in zip(_value_and_grads(ours, x, w), _value_and_grads(theirs, x, w)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=2e-5, rtol=1e-5)


def test_mixed_precision_computes_in_float32():
    ours = LayerNormalization(dtype="mixed_bfloat16")
    ours.build((2, 5, 8))
    x = tf.random.normal([2, 5, 8], dtype=tf.bfloat16)
    y, dx, dgamma, dbeta = _value_and_grads(ours, x, tf.ones([2, 5, 8]))
    assert y.dtype == tf.bfloat16 and dx.dtype == tf.bfloat16
    assert dgamma.dtype == tf.float32 and dbeta.dtype == tf.float32


def test_under_xla():
    ours, theirs = _pair((4, 8))
    x = tf.random.normal([4, 8])
    fn = tf.function(lambda x: ours(x), jit_compile=True)
    np.testing.assert_allclose(to_numpy(fn(x)), to_numpy(theirs(x)), atol=1e-5)


def test_config_round_trips():
    layer = LayerNormalization(epsilon=1e-3, center=False, name="norm")
    config = layer.get_config()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is LayerNormalization and revived.get_config() == config
