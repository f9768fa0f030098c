"""Tests for filter_logits (temperature, top-k, top-p)."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.decoding import filter_logits


def kept(filtered):
    """Indices of the tokens that were not masked, per row."""
    return [set(np.flatnonzero(np.isfinite(row))) for row in np.asarray(filtered)]


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (0.75, {1, 3, 4}),  # mass before 0.15 is 0.70 < 0.75; before 0.10 it is 0.85
        (0.6, {1, 3}),  # mass before 0.20 is 0.50 < 0.6; before 0.15 it is 0.70
        (0.45, {1}),  # 0.5 alone reaches 0.45
        (0.01, {1}),  # the best token is always kept
        (0.9, {0, 1, 3, 4}),  # mass before 0.05 is 0.95
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_hand_computed_nucleus(top_p, expected):
    probs = np.array([0.1, 0.5, 0.05, 0.2, 0.15])
    logits = np.log(np.stack([probs, probs[::-1]])).astype(np.float32)  # 2 rows, 2 orders
    filtered = filter_logits(tf.constant(logits), top_p=top_p)
    assert kept(filtered) == [expected, {4 - i for i in expected}]
    mask = np.isfinite(filtered.numpy())
    np.testing.assert_array_equal(filtered.numpy()[mask], logits[mask])
    assert np.all(filtered.numpy()[~mask] == -np.inf)


def test_top_k_keeps_exactly_k_by_rank_with_ties():
    logits = tf.constant([[1.0, 3.0, 3.0, 0.0]])
    assert kept(filter_logits(logits, top_k=1)) == [{1}]
    assert kept(filter_logits(logits, top_k=2)) == [{1, 2}]
    assert kept(filter_logits(logits, top_k=3)) == [{0, 1, 2}]
    assert kept(filter_logits(logits, top_k=0)) == [{0, 1, 2, 3}]
    assert kept(filter_logits(logits, top_k=10)) == [{0, 1, 2, 3}]


def test_top_p_applies_to_the_renormalised_top_k_distribution():
    logits = tf.math.log(tf.constant([[0.4, 0.3, 0.2, 0.1]]))
    # Alone, p = 0.5 keeps {0, 1} (0.4 < 0.5). After top-2, 0.4 / 0.7 = 0.57 >= 0.5.
    assert kept(filter_logits(logits, top_p=0.5)) == [{0, 1}]
    assert kept(filter_logits(logits, top_k=2, top_p=0.5)) == [{0}]


def test_temperature_divides_the_logits_before_top_p():
    logits = tf.math.log(tf.constant([[0.6, 0.3, 0.1]]))
    np.testing.assert_allclose(filter_logits(logits, temperature=0.5), logits / 0.5, rtol=1e-6)
    # T = 0.5 sharpens to (0.78, 0.20, 0.02): p = 0.75 keeps one token instead of two.
    assert kept(filter_logits(logits, top_p=0.75)) == [{0, 1}]
    assert kept(filter_logits(logits, temperature=0.5, top_p=0.75)) == [{0}]


def test_tensor_settings_equal_python_values_under_xla():
    logits = tf.constant(np.random.default_rng(0).normal(size=(3, 9)), tf.float32)

    @tf.function(jit_compile=True)
    def run(temperature, top_k, top_p):
        return filter_logits(logits, temperature, top_k, top_p)

    for settings in ((0.7, 4, 0.8), (1.3, 0, 0.5), (1.0, 2, 1.0)):
        want = filter_logits(logits, *settings).numpy()
        got = run(tf.constant(settings[0]), tf.constant(settings[1]), tf.constant(settings[2]))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert run.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be in"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_k": 1.5}, "top_k must be an integer"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        filter_logits(tf.zeros([1, 3]), **kwargs)
