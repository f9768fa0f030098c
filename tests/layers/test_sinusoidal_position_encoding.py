"""SinusoidalPositionEncoding: golden values and offsets."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import SinusoidalPositionEncoding
from tests.testing import run_layer_test, to_numpy


def test_run_layer_test(tmp_path):
    run_layer_test(
        SinusoidalPositionEncoding,
        {},
        {"inputs": np.zeros((2, 5, 8), "float32")},
        expected_output_shape=(1, 5, 8),
        expected_symbolic_output_shape=(1, 5, 8),
        expected_num_trainable_weights=0,
        run_training_check=False,  # no weights
        tmp_path=tmp_path,
    )


def test_golden_values_width_4():
    # PE[p] = [sin(p), cos(p), sin(p / 100), cos(p / 100)] for D = 4 (10000 ** (2/4) = 100).
    expected = np.array(
        [
            [0.0, 1.0, 0.0, 1.0],
            [0.84147098, 0.54030231, 0.00999983, 0.99995000],
            [0.90929743, -0.41614684, 0.01999867, 0.99980001],
        ],
        "float32",
    )
    encoding = to_numpy(SinusoidalPositionEncoding()(np.zeros((1, 11, 4), "float32")))[0]
    np.testing.assert_allclose(encoding[:3], expected, atol=1e-6)
    np.testing.assert_allclose(
        encoding[10], [-0.54402111, -0.83907153, 0.09983342, 0.99500417], atol=1e-6
    )


def test_matches_the_paper_formula_at_width_512():
    d, positions = 512, np.array([0, 1, 7, 100, 511])
    encoding = to_numpy(SinusoidalPositionEncoding()(np.zeros((1, 512, d), "float32")))[0]
    i = np.arange(d // 2)
    angle = positions[:, None] / np.power(10000.0, 2 * i / d)[None, :]
    np.testing.assert_allclose(encoding[positions, 0::2], np.sin(angle), atol=2e-4)
    np.testing.assert_allclose(encoding[positions, 1::2], np.cos(angle), atol=2e-4)


def test_start_index_shifts_positions():
    layer = SinusoidalPositionEncoding()
    full = to_numpy(layer(np.zeros((1, 6, 8), "float32")))
    step = to_numpy(layer(np.zeros((1, 1, 8), "float32"), start_index=tf.constant(4)))
    np.testing.assert_allclose(step[0, 0], full[0, 4], atol=1e-6)


def test_odd_width_is_an_error():
    with pytest.raises(ValueError, match="even, known feature width"):
        SinusoidalPositionEncoding()(np.zeros((1, 3, 5), "float32"))


def test_bad_wavelength():
    with pytest.raises(
        ValueError, match="max_wavelength must be a positive number. Received: max_wavelength=0"
    ):
        SinusoidalPositionEncoding(max_wavelength=0)
