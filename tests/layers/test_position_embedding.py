"""PositionEmbedding (learned positions)."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import PositionEmbedding
from tests.testing import run_layer_test, to_numpy


def test_run_layer_test(tmp_path):
    run_layer_test(
        PositionEmbedding,
        {"max_length": 10},
        {"inputs": np.zeros((2, 5, 8), "float32")},
        expected_output_shape=(1, 5, 8),
        expected_symbolic_output_shape=(1, 5, 8),
        expected_num_trainable_weights=1,
        # Only rows 0..4 are read: the gradient of the table is sparse but not None.
        tmp_path=tmp_path,
    )


def test_rows_follow_start_index():
    layer = PositionEmbedding(max_length=8)
    full = to_numpy(layer(np.zeros((1, 8, 4), "float32")))[0]
    np.testing.assert_array_equal(full, to_numpy(layer.embeddings))
    step = to_numpy(layer(np.zeros((2, 1, 4), "float32"), start_index=tf.constant(5)))
    np.testing.assert_array_equal(step[0, 0], full[5])


def test_too_long_is_an_error():
    layer = PositionEmbedding(max_length=4)
    with pytest.raises(ValueError, match="exceed max_length=4"):
        layer(np.zeros((1, 5, 4), "float32"))


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_max_length(value):
    with pytest.raises(
        ValueError, match=f"max_length must be a positive integer. Received: max_length={value}"
    ):
        PositionEmbedding(max_length=value)
