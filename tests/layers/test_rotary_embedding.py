"""RotaryEmbedding against a hand-written numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import RotaryEmbedding
from tests.testing import run_layer_test, to_numpy


def numpy_rope(x, start=0, base=10000.0):
    """Reference: pair (x[i], x[i + H/2]) as the complex number x[i] + j x[i + H/2] and
    multiply it by exp(j * p * base ** (-2 i / H)) at position p."""
    h = x.shape[-1]
    half = h // 2
    positions = start + np.arange(x.shape[1])
    theta = base ** (-2.0 * np.arange(half) / h)
    rotation = np.exp(1j * positions[:, None] * theta[None, :])  # (T, H/2)
    if x.ndim == 4:
        rotation = rotation[:, None, :]
    z = (x[..., :half] + 1j * x[..., half:]) * rotation
    return np.concatenate([z.real, z.imag], axis=-1).astype("float32")


def test_run_layer_test(tmp_path):
    run_layer_test(
        RotaryEmbedding,
        {},
        {"inputs": np.random.default_rng(0).normal(size=(2, 5, 3, 8)).astype("float32")},
        expected_output_shape=(2, 5, 3, 8),
        expected_num_trainable_weights=0,
        run_training_check=False,  # no weights
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("shape", [(2, 7, 3, 8), (2, 7, 16)])
def test_matches_numpy_reference(shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    np.testing.assert_allclose(to_numpy(RotaryEmbedding()(x)), numpy_rope(x), atol=1e-5)
    shifted = to_numpy(RotaryEmbedding()(x, start_index=tf.constant(9)))
    np.testing.assert_allclose(shifted, numpy_rope(x, start=9), atol=1e-5)


def test_golden_value_width_2():
    # H = 2: one pair rotated by p radians.
    x = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], "float32")
    out = to_numpy(RotaryEmbedding()(x))
    np.testing.assert_allclose(
        out[0], [[1.0, 0.0], [np.cos(1.0), np.sin(1.0)], [-np.sin(2.0), np.cos(2.0)]], atol=1e-6
    )


def test_dot_product_depends_only_on_distance():
    rng = np.random.default_rng(2)
    q, k = (
        rng.normal(size=(1, 1, 8)).astype("float32"),
        rng.normal(size=(1, 1, 8)).astype("float32"),
    )
    rope = RotaryEmbedding()

    def score(p, s):
        return float(np.sum(to_numpy(rope(q, start_index=p)) * to_numpy(rope(k, start_index=s))))

    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_odd_width_is_an_error():
    with pytest.raises(ValueError, match="even, known feature width"):
        RotaryEmbedding()(np.zeros((1, 2, 3), "float32"))
