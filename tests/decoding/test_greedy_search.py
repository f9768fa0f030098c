"""Tests for greedy_search."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.decoding import greedy_search

from .fakes import (
    BOS,
    EOS,
    PAD,
    CopyModel,
    HistoryModel,
    TableModel,
    greedy_reference,
    log_softmax,
    table_from_rows,
)


def test_picks_argmax_stops_at_eos_and_pads():
    # V = 6. From BOS: 4 (0.7). Then 5 (0.6). Then EOS (0.8). From 3: EOS (0.9).
    default = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    rows = {
        (0, BOS): [0.05, 0.05, 0.05, 0.1, 0.7, 0.05],
        (1, 4): [0.05, 0.05, 0.1, 0.1, 0.1, 0.6],
        (2, 5): [0.02, 0.02, 0.8, 0.06, 0.05, 0.05],
        (0, 3): [0.02, 0.02, 0.9, 0.02, 0.02, 0.02],
    }
    table = table_from_rows(5, 6, rows, default)
    model = TableModel(table)
    result = greedy_search(model.next_fn, tf.constant([BOS, 3]), model.cache(2), 5)
    np.testing.assert_array_equal(result.ids, [[4, 5, EOS], [EOS, PAD, PAD]])
    np.testing.assert_array_equal(result.lengths, [3, 1])
    expected = [np.log(0.7) + np.log(0.6) + np.log(0.8), np.log(0.9)]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    np.testing.assert_allclose(result.normalized_scores, expected, rtol=1e-5)
    assert result.ids.dtype == tf.int32 and result.lengths.dtype == tf.int32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_python_reference(seed):
    model = TableModel.random(7, 7, seed)
    starts, max_lengths = [BOS, 3, 4, 5], [7, 2, 5, 1]
    result = greedy_search(
        model.next_fn, tf.constant(starts), model.cache(4), 7, max_lengths=tf.constant(max_lengths)
    )
    for b, (start, limit) in enumerate(zip(starts, max_lengths)):
        ids, score = greedy_reference(model, start, limit)
        assert int(result.lengths[b]) == len(ids)
        np.testing.assert_array_equal(result.ids[b, : len(ids)], ids)
        assert np.all(result.ids[b, len(ids) :].numpy() == PAD)
        np.testing.assert_allclose(result.scores[b], score, rtol=1e-5)


def test_per_example_max_lengths_cut_without_eos():
    source = [[3, 4, 5, 3, 4, EOS], [5, 5, 4, 3, 3, EOS], [4, EOS, 0, 0, 0, 0]]
    model = CopyModel(source, vocab_size=6)
    result = greedy_search(
        model.next_fn, tf.fill([3], BOS), model.cache(), 6, max_lengths=tf.constant([2, 4, 9])
    )
    np.testing.assert_array_equal(result.lengths, [2, 4, 2])
    np.testing.assert_array_equal(result.ids, [[3, 4, PAD, PAD], [5, 5, 4, 3], [4, EOS, PAD, PAD]])


def test_early_exit_calls_next_fn_only_until_all_finished():
    source = [[3, EOS, 0, 0, 0], [4, 5, 3, 4, EOS]]
    model = CopyModel(source, vocab_size=6, count_calls=True)

    @tf.function
    def run(static_shapes):
        return greedy_search(
            model.next_fn, tf.fill([2], BOS), model.cache(), 10, static_shapes=static_shapes
        )

    dynamic = run(False)
    assert int(model.calls.numpy()) == 5
    np.testing.assert_array_equal(dynamic.lengths, [2, 5])
    model.calls.assign(0)
    static = run(True)
    assert int(model.calls.numpy()) == 10
    assert static.ids.shape == (2, 10)
    np.testing.assert_array_equal(static.ids[:, :5], dynamic.ids)
    np.testing.assert_array_equal(static.ids[:, 5:], np.zeros((2, 5)))


def test_static_early_exit_stops_with_fixed_shapes_also_under_xla():
    source = [[3, EOS, 0, 0, 0], [4, 5, 3, 4, EOS]]
    model = CopyModel(source, vocab_size=6, count_calls=True)

    def run(early_exit):
        return greedy_search(
            model.next_fn,
            tf.fill([2], BOS),
            model.cache(),
            10,
            static_shapes=True,
            early_exit=early_exit,
        )

    full = tf.function(run)(False)
    model.calls.assign(0)
    early = tf.function(run)(True)
    assert int(model.calls.numpy()) == 5  # not max_length = 10
    for got in (early, tf.function(run, jit_compile=True)(True)):
        assert got.ids.shape == (2, 10)
        np.testing.assert_array_equal(got.ids, full.ids)
        np.testing.assert_array_equal(got.lengths, full.lengths)
        np.testing.assert_allclose(got.scores, full.scores, rtol=1e-6)


def test_static_equals_dynamic_and_compiles_with_xla():
    model = HistoryModel(vocab_size=7, seed=3, max_length=8)
    starts = tf.constant([BOS, 3, 4])
    max_lengths = tf.constant([8, 3, 6])
    dynamic = greedy_search(model.next_fn, starts, model.cache(3), 8, max_lengths=max_lengths)

    @tf.function(jit_compile=True)
    def static_xla(starts, max_lengths):
        return greedy_search(
            model.next_fn, starts, model.cache(3), 8, max_lengths=max_lengths, static_shapes=True
        )

    for static in (
        greedy_search(
            model.next_fn, starts, model.cache(3), 8, max_lengths=max_lengths, static_shapes=True
        ),
        static_xla(starts, max_lengths),
    ):
        width = dynamic.ids.shape[1]
        assert static.ids.shape == (3, 8)
        np.testing.assert_array_equal(static.ids[:, :width], dynamic.ids)
        assert np.all(static.ids[:, width:].numpy() == PAD)
        np.testing.assert_array_equal(static.lengths, dynamic.lengths)
        np.testing.assert_allclose(static.scores, dynamic.scores, rtol=1e-5)


def test_settings_as_tensors_in_one_traced_graph():
    model = TableModel.random(6, 6, seed=4)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def run(starts, max_length, max_lengths):
        cache = {"steps": tf.zeros_like(starts)}
        return greedy_search(model.next_fn, starts, cache, max_length, max_lengths=max_lengths)

    for max_length, max_lengths in ((6, [6, 2]), (3, [1, 6])):
        starts = tf.constant([BOS, 4])
        got = run(starts, tf.constant(max_length), tf.constant(max_lengths))
        want = greedy_search(
            model.next_fn, starts, model.cache(2), max_length, max_lengths=tf.constant(max_lengths)
        )
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.lengths, want.lengths)
    assert run.experimental_get_tracing_count() == 1


def test_prefix_is_forced_and_not_scored():
    model = HistoryModel(vocab_size=7, seed=5, max_length=8)
    prefix = tf.constant([[5, 6, 3], [4, 0, 0]])  # right-padded with PAD
    prefix_lengths = tf.constant([3, 1])
    result = greedy_search(
        model.next_fn,
        tf.constant([BOS, BOS]),
        model.cache(2),
        8,
        prefix_ids=prefix,
        prefix_lengths=prefix_lengths,
    )
    for b, forced in enumerate(([5, 6, 3], [4])):
        ids, score = greedy_reference(model, BOS, 8, prefix=forced)
        np.testing.assert_array_equal(result.ids[b, : len(ids)], ids)
        np.testing.assert_array_equal(result.ids[b, : len(forced)], forced)
        assert int(result.lengths[b]) == len(ids)
        np.testing.assert_allclose(result.scores[b], score, rtol=1e-5)
    # The model alone would not write the prompt, so forcing changed the output.
    free = greedy_search(model.next_fn, tf.constant([BOS, BOS]), model.cache(2), 8)
    assert list(free.ids[0, :3].numpy()) != [5, 6, 3]
    assert int(free.ids[1, 0]) != 4


def test_start_ids_none_uses_bos():
    model = TableModel.random(4, 5, seed=6)
    implicit = greedy_search(model.next_fn, None, model.cache(3), 4)
    explicit = greedy_search(model.next_fn, tf.fill([3], BOS), model.cache(3), 4)
    np.testing.assert_array_equal(implicit.ids, explicit.ids)


def test_half_precision_logits_are_scored_in_float32():
    model = TableModel.random(4, 5, seed=7)

    def next_fn(tokens, cache, index):
        logits, cache = model.next_fn(tokens, cache, index)
        return tf.cast(logits, tf.float16), cache

    result = greedy_search(next_fn, tf.constant([BOS]), model.cache(1), 4)
    assert result.scores.dtype == tf.float32
    ids, _ = greedy_reference(model, BOS, 4)
    np.testing.assert_array_equal(result.ids[0], ids)
    expected = sum(
        log_softmax(model.table[i, prev].astype(np.float16))[tok]
        for i, (prev, tok) in enumerate(zip([BOS] + ids[:-1], ids))
    )
    np.testing.assert_allclose(result.scores[0], expected, rtol=1e-3)


def test_argument_errors():
    model = TableModel.random(4, 5, seed=8)
    with pytest.raises(ValueError, match="max_length must be a Python int"):
        greedy_search(
            model.next_fn, tf.constant([BOS]), model.cache(1), tf.constant(4), static_shapes=True
        )
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        greedy_search(model.next_fn, tf.constant([BOS]), model.cache(1), 0)
    with pytest.raises(ValueError, match="given together"):
        greedy_search(model.next_fn, tf.constant([BOS]), model.cache(1), 4, prefix_ids=[[3]])
    with pytest.raises(ValueError, match="start_ids must have shape"):
        greedy_search(model.next_fn, tf.constant([[BOS]]), model.cache(1), 4)
