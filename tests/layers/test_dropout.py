"""Dropout: 16-bit decisions, exact scale, independent halves, seed state, XLA."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers.dropout import Dropout, effective_rate, keep_threshold
from tests.testing import check_config, to_numpy

N = 400_000  # 4-sigma of a 10% drop share over N elements: 0.0019


def test_rate_is_rounded_to_16_bits():
    assert keep_threshold(0.1) == 6554
    assert effective_rate(0.1) == 6554 / 65536
    assert abs(effective_rate(0.1) - 0.1) < 1 / 65536
    assert effective_rate(0.5) == 0.5


def test_drop_share_and_scale_are_exact():
    layer = Dropout(0.1, seed=3)
    out = to_numpy(layer(tf.ones([N]), training=True))
    dropped = out == 0
    scale = 65536 / (65536 - 6554)
    assert np.all(out[~dropped] == np.float32(scale))  # every kept value, exactly
    assert abs(dropped.mean() - effective_rate(0.1)) < 0.002
    assert abs(out.mean() - 1.0) < 0.003  # unbiased


def test_the_two_halves_of_a_random_word_decide_independently():
    layer = Dropout(0.3, seed=5)
    dropped = to_numpy(layer(tf.ones([N]), training=True)) == 0
    even, odd = dropped[0::2], dropped[1::2]  # the two halves of each 32-bit draw
    p = effective_rate(0.3)
    assert abs(even.mean() - p) < 0.005 and abs(odd.mean() - p) < 0.005
    assert abs((even & odd).mean() - p * p) < 0.004
    assert abs(np.corrcoef(even, odd)[0, 1]) < 0.01


def test_odd_sizes_shapes_and_dtypes():
    layer = Dropout(0.2, seed=1, dtype="mixed_bfloat16")
    x = tf.ones([3, 5, 7], tf.bfloat16)  # 105 elements: an odd count
    out = layer(x, training=True)
    assert out.shape == (3, 5, 7) and out.dtype == tf.bfloat16
    values = np.unique(to_numpy(tf.cast(out, tf.float32)))
    assert set(values) <= {0.0, float(tf.cast(tf.constant(65536 / 52429, tf.bfloat16), tf.float32))}


def test_inference_and_zero_rate_are_the_identity():
    x = tf.random.normal([4, 6])
    np.testing.assert_array_equal(to_numpy(Dropout(0.5)(x, training=False)), to_numpy(x))
    np.testing.assert_array_equal(to_numpy(Dropout(0.0)(x, training=True)), to_numpy(x))


def test_seed_state_advances_and_replays():
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    x = tf.ones([64])
    first = to_numpy(a(x, training=True))
    second = to_numpy(a(x, training=True))
    assert not np.array_equal(first, second)  # a new mask each call
    np.testing.assert_array_equal(first, to_numpy(b(x, training=True)))  # same seed
    # The state is a variable (checkpointed with the model): restoring it replays.
    b.seed_generator.state.assign(a.seed_generator.state.value - [0, 1])
    np.testing.assert_array_equal(second, to_numpy(b(x, training=True)))


def test_gradient_is_the_mask_times_the_scale():
    layer = Dropout(0.25, seed=2)
    x = tf.random.normal([1000])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    grad = to_numpy(tape.gradient(y, x))
    kept = to_numpy(y) != 0
    np.testing.assert_allclose(grad[kept], 65536 / (65536 - 16384))
    assert np.all(grad[~kept] == 0)


@pytest.mark.parametrize("jit", [False, True])
def test_in_a_compiled_function(jit):
    layer = Dropout(0.1, seed=4)
    fn = tf.function(lambda x: layer(x, training=True), jit_compile=jit)
    out = to_numpy(fn(tf.ones([N])))
    assert abs((out == 0).mean() - effective_rate(0.1)) < 0.002


def test_config_round_trips():
    check_config(Dropout, {"rate": 0.1, "seed": 3})
