"""beam_search: the modes agree on the paths the other tests run in dynamic mode only."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.decoding import beam_search

from .fakes import BOS, EOS, PAD, HistoryModel, TableModel

# Four examples, each on its own path: a prefix of 3 with room after it, a prefix of 1
# with a short bound, a prefix that fills its max_length (one hypothesis, then empty
# slots), and no prefix at all.
STARTS = [BOS, 4, BOS, 6]
PREFIX_IDS = [[5, 6, 3], [3, PAD, PAD], [4, 4, PAD], [PAD, PAD, PAD]]
PREFIX_LENGTHS = [3, 1, 2, 0]
MAX_LENGTHS = [6, 4, 2, 5]  # all below max_length = 7: dynamic mode stops first


def decode(model, **kwargs):
    return beam_search(
        model.next_fn,
        tf.constant(STARTS),
        model.cache(len(STARTS)),
        7,
        beam_size=3,
        num_return=2,
        length_penalty=0.6,
        max_lengths=tf.constant(MAX_LENGTHS),
        prefix_ids=tf.constant(PREFIX_IDS),
        prefix_lengths=tf.constant(PREFIX_LENGTHS),
        **kwargs,
    )


def assert_same_result(got, dynamic, rtol):
    width = dynamic.ids.shape[2]
    assert got.ids.shape == (len(STARTS), 2, 7)
    np.testing.assert_array_equal(got.ids[:, :, :width], dynamic.ids)
    assert np.all(got.ids[:, :, width:].numpy() == PAD)
    np.testing.assert_array_equal(got.lengths, dynamic.lengths)
    np.testing.assert_allclose(got.scores, dynamic.scores, rtol=rtol)
    np.testing.assert_allclose(got.normalized_scores, dynamic.normalized_scores, rtol=rtol)


@pytest.mark.parametrize("early_exit", [False, True])
def test_static_equals_dynamic_with_a_prefix_and_max_lengths(early_exit):
    model = HistoryModel(vocab_size=7, seed=91, max_length=7)
    dynamic = decode(model)
    np.testing.assert_array_equal(dynamic.ids[0, :, :3], [[5, 6, 3]] * 2)
    np.testing.assert_array_equal(dynamic.ids[2, :, :2], [[4, 4], [PAD, PAD]])
    np.testing.assert_array_equal(dynamic.lengths[2], [2, 0])
    # Without XLA the modes run the same ops on the same values: equal to the bit.
    assert_same_result(decode(model, static_shapes=True, early_exit=early_exit), dynamic, 0)


def test_static_xla_equals_dynamic_with_a_prefix_and_max_lengths():
    model = HistoryModel(vocab_size=7, seed=91, max_length=7)

    @tf.function(jit_compile=True)
    def static_xla(early_exit):
        return decode(model, static_shapes=True, early_exit=early_exit)

    dynamic = decode(model)
    for early_exit in (False, True):
        assert_same_result(static_xla(early_exit), dynamic, 1e-5)


def test_a_vocabulary_of_one_token_is_an_error():
    model = TableModel(np.zeros([3, 1, 1], np.float32))
    with pytest.raises(ValueError, match="vocabulary of >= 2 tokens"):
        beam_search(model.next_fn, tf.constant([0]), model.cache(1), 3, eos_id=EOS)
