"""Mask functions, checked against literal matrices."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import masks
from tests.testing import to_numpy

T, F = True, False


def test_padding_mask_marks_real_tokens():
    ids = np.array([[5, 7, 2, 0], [1, 0, 0, 0]], "int32")
    expected = [[T, T, T, F], [T, F, F, F]]
    np.testing.assert_array_equal(to_numpy(masks.padding_mask(ids)), expected)


def test_causal_mask_is_lower_triangle():
    expected = [[[T, F, F], [T, T, F], [T, T, T]]]
    np.testing.assert_array_equal(to_numpy(masks.causal_mask(3)), expected)


def test_causal_mask_blocks_every_future_key():
    mask = to_numpy(masks.causal_mask(6))[0]
    for i in range(6):
        for j in range(6):
            assert mask[i, j] == (j <= i)


def test_cache_aware_causal_mask_is_rectangular():
    # Two queries at positions 1 and 2 over a cache of 5 slots.
    expected = [[[T, T, F, F, F], [T, T, T, F, F]]]
    np.testing.assert_array_equal(to_numpy(masks.causal_mask(2, 5, index=1)), expected)
    # One query at position 3: keys 0..3.
    np.testing.assert_array_equal(to_numpy(masks.causal_mask(1, 5, index=3)), [[[T, T, T, T, F]]])


def test_causal_mask_with_traced_index():
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def mask_at(index):
        return masks.causal_mask(1, 4, index=index)

    np.testing.assert_array_equal(to_numpy(mask_at(tf.constant(0))), [[[T, F, F, F]]])
    np.testing.assert_array_equal(to_numpy(mask_at(tf.constant(2))), [[[T, T, T, F]]])


def test_key_padding_attention_mask_shape_and_values():
    mask = to_numpy(masks.key_padding_attention_mask(np.array([[1, 1, 0], [1, 0, 0]])))
    np.testing.assert_array_equal(mask, [[[T, T, F]], [[T, F, F]]])


def test_merge_masks_and_none():
    assert masks.merge_masks(None, None) is None
    a = np.array([[[T, T], [F, T]]])
    b = np.array([[[T, F], [T, T]]])
    np.testing.assert_array_equal(to_numpy(masks.merge_masks(a, None, b)), [[[T, F], [F, T]]])


def test_self_attention_mask_causal_with_padding():
    padding = np.array([[1, 1, 1], [1, 1, 0]])
    expected = [
        [[T, F, F], [T, T, F], [T, T, T]],
        [[T, F, F], [T, T, F], [T, T, F]],
    ]
    mask = masks.self_attention_mask(3, padding_mask=padding, causal=True)
    np.testing.assert_array_equal(to_numpy(mask), expected)


def test_self_attention_mask_without_anything_is_none():
    assert masks.self_attention_mask(3) is None


@pytest.mark.parametrize("length", [1, 4])
def test_causal_mask_at_index_zero_equals_square(length):
    np.testing.assert_array_equal(
        to_numpy(masks.causal_mask(length, length, index=0)), to_numpy(masks.causal_mask(length))
    )
