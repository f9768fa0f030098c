"""Tests for beam_search."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.decoding import beam_search, greedy_search

from .fakes import (
    BOS,
    EOS,
    PAD,
    HistoryModel,
    TableModel,
    exhaustive_nbest,
    gnmt,
    replay_score,
    table_from_rows,
)

A, B_ = 3, 4  # two ordinary tokens of the small hand-made vocabularies (V = 5)


def assert_nbest_consistent(result, model, starts, alpha, prefix_lengths=None):
    """Every returned hypothesis: replayed score = reported score, PAD after the end."""
    ids, lengths = result.ids.numpy(), result.lengths.numpy()
    for b, start in enumerate(starts):
        forced = 0 if prefix_lengths is None else prefix_lengths[b]
        for n in range(ids.shape[1]):
            length = lengths[b, n]
            hyp = ids[b, n, :length]
            assert np.all(ids[b, n, length:] == PAD)
            assert EOS not in hyp[:-1]
            score = replay_score(model, start, hyp, prefix_length=forced)
            np.testing.assert_allclose(result.scores[b, n], score, rtol=1e-4, atol=1e-5)
            norm = score / gnmt(length - forced, alpha)
            np.testing.assert_allclose(result.normalized_scores[b, n], norm, rtol=1e-4, atol=1e-5)
        assert np.all(np.diff(result.normalized_scores[b].numpy()) <= 1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_one_equals_greedy(seed):
    model = HistoryModel(vocab_size=6, seed=seed, max_length=7)
    starts, max_lengths = tf.constant([BOS, 3, 4]), tf.constant([7, 7, 4])
    greedy = greedy_search(model.next_fn, starts, model.cache(3), 7, max_lengths=max_lengths)
    beam = beam_search(
        model.next_fn,
        starts,
        model.cache(3),
        7,
        beam_size=1,
        length_penalty=0.0,
        max_lengths=max_lengths,
    )
    np.testing.assert_array_equal(beam.ids[:, 0], greedy.ids)
    np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
    np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, rtol=1e-5)


def trap_table():
    # From BOS: A 0.6, B 0.4. After A: EOS 0.4 at best; after B: EOS 0.9.
    # Greedy: [A, EOS] = 0.24. Best: [B, EOS] = 0.36.
    eps = 1e-4
    rows = {
        (0, BOS): [eps, eps, eps, 0.6, 0.4],
        (1, A): [eps, eps, 0.4, 0.3, 0.3],
        (1, B_): [eps, eps, 0.9, 0.05, 0.05],
    }
    return table_from_rows(4, 5, rows, default=[eps, eps, 1.0, eps, eps])


def test_beam_escapes_greedy_trap():
    table = trap_table()
    model = TableModel(table)
    greedy = greedy_search(model.next_fn, tf.constant([BOS]), model.cache(1), 4)
    np.testing.assert_array_equal(greedy.ids, [[A, EOS]])
    beam = beam_search(
        model.next_fn,
        tf.constant([BOS]),
        model.cache(1),
        4,
        beam_size=2,
        num_return=2,
        length_penalty=0.0,
    )
    np.testing.assert_array_equal(beam.ids, [[[B_, EOS], [A, EOS]]])
    np.testing.assert_array_equal(beam.lengths, [[2, 2]])
    best = table[0, BOS, B_] + table[1, B_, EOS]
    second = table[0, BOS, A] + table[1, A, EOS]
    np.testing.assert_allclose(beam.scores, [[best, second]], rtol=1e-6)
    np.testing.assert_allclose(best, np.log(0.36), rtol=1e-3)
    assert float(beam.scores[0, 0]) > float(greedy.scores[0])


def test_length_penalty_changes_the_choice():
    # [EOS] has p = 0.5; [A, A, EOS] has p = 0.45 * 0.95 * 0.99 = 0.423.
    # alpha = 0: -0.693 vs -0.860 -> short. alpha = 1: -0.693 / 1 vs -0.860 / (8/6) = -0.645.
    eps = 1e-4
    rows = {
        (0, BOS): [eps, eps, 0.5, 0.45, 0.05],
        (1, A): [eps, eps, 0.05, 0.95, eps],
        (2, A): [eps, eps, 0.99, 0.01, eps],
    }
    model = TableModel(table_from_rows(4, 5, rows, default=[eps, eps, 1.0, eps, eps]))

    def best(alpha):
        result = beam_search(
            model.next_fn, tf.constant([BOS]), model.cache(1), 4, beam_size=2, length_penalty=alpha
        )
        return list(result.ids[0, 0, : int(result.lengths[0, 0])].numpy())

    assert best(0.0) == [EOS]
    assert best(1.0) == [A, A, EOS]


@pytest.mark.parametrize(
    "alpha, max_length, rows, expected",
    [
        # alpha = 2 favours length: [EOS] (0.6, normalised -0.51) must not stop the search
        # at step 0, although the alive [A] (0.35) is behind it; [A] * 5 + [EOS] has
        # -1.10 / (11/6)**2 = -0.33.
        (
            2.0,
            6,
            {
                (0, BOS): [1e-4, 1e-4, 0.6, 0.35, 0.05],
                **{(i, A): [1e-4, 1e-4, 0.01, 0.99, 1e-4] for i in range(1, 5)},
                (5, A): [1e-4, 1e-4, 0.99, 0.01, 1e-4],
            },
            [A, A, A, A, A, EOS],
        ),
        # alpha = -1 favours short: [EOS] (0.37, -0.99) must not stop the search at step 0;
        # [A, EOS] has log(0.6 * 0.95) / (6/7) = -0.66. Bounding with the penalty at
        # max_length = 10 (6/15) instead of at the next length would stop it.
        (
            -1.0,
            10,
            {(0, BOS): [1e-4, 1e-4, 0.37, 0.6, 0.03], (1, A): [1e-4, 1e-4, 0.95, 0.04, 0.01]},
            [A, EOS],
        ),
    ],
)
def test_early_stop_never_cuts_a_better_hypothesis(alpha, max_length, rows, expected):
    model = TableModel(table_from_rows(max_length, 5, rows, default=[1e-4, 1e-4, 1.0, 1e-4, 1e-4]))
    result = beam_search(
        model.next_fn,
        tf.constant([BOS]),
        model.cache(1),
        max_length,
        beam_size=2,
        length_penalty=alpha,
    )
    assert list(result.ids[0, 0, : int(result.lengths[0, 0])].numpy()) == expected
    table = model.table
    score = table[0, BOS, A] + sum(table[i, A, token] for i, token in enumerate(expected[1:], 1))
    np.testing.assert_allclose(result.scores[0, 0], score, rtol=1e-5)
    np.testing.assert_allclose(
        result.normalized_scores[0, 0], score / gnmt(len(expected), alpha), rtol=1e-5
    )


@pytest.mark.parametrize("alpha", [0.0, 0.6, -0.5])
def test_nbest_equals_exhaustive_search_with_a_wide_beam(alpha):
    # V = 5, lengths <= 4: at most 4**3 alive hypotheses, so a beam of 64 is exact,
    # and the early stop must not cut any of the 6 best.
    model = HistoryModel(vocab_size=5, seed=11, scale=1.5, max_length=4)
    starts, max_lengths = [BOS, 3], [4, 3]
    result = beam_search(
        model.next_fn,
        tf.constant(starts),
        model.cache(2),
        4,
        beam_size=64,
        num_return=6,
        length_penalty=alpha,
        max_lengths=tf.constant(max_lengths),
    )
    for b, (start, limit) in enumerate(zip(starts, max_lengths)):
        expected = exhaustive_nbest(model, start, limit, alpha, 6)
        for n, (ids, score, norm) in enumerate(expected):
            assert int(result.lengths[b, n]) == len(ids)
            np.testing.assert_array_equal(result.ids[b, n, : len(ids)], ids)
            np.testing.assert_allclose(result.scores[b, n], score, rtol=1e-4)
            np.testing.assert_allclose(result.normalized_scores[b, n], norm, rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_nbest_scores_replay_monotone_and_raw_when_alpha_zero(alpha):
    # The model's logits depend on the history held in the cache: a wrong cache reorder
    # makes a replayed score differ from the reported one.
    model = HistoryModel(vocab_size=7, seed=21, max_length=6)
    starts = [BOS, 3, 5]
    result = beam_search(
        model.next_fn,
        tf.constant(starts),
        model.cache(3),
        6,
        beam_size=4,
        num_return=4,
        length_penalty=alpha,
    )
    assert result.ids.shape[:2] == (3, 4)
    assert np.all(result.lengths.numpy() > 0)
    assert_nbest_consistent(result, model, starts, alpha)
    if alpha == 0.0:
        np.testing.assert_array_equal(result.scores, result.normalized_scores)
        assert np.all(np.diff(result.scores.numpy(), axis=1) <= 0)


def test_static_equals_dynamic_and_xla():
    model = HistoryModel(vocab_size=7, seed=31, max_length=7)
    starts, max_lengths = tf.constant([BOS, 4, 6]), tf.constant([7, 3, 5])
    kwargs = dict(beam_size=3, num_return=2, length_penalty=0.6)
    dynamic = beam_search(
        model.next_fn, starts, model.cache(3), 7, max_lengths=max_lengths, **kwargs
    )

    @tf.function(jit_compile=True)
    def static_xla(starts, max_lengths, alpha):
        return beam_search(
            model.next_fn,
            starts,
            model.cache(3),
            7,
            beam_size=3,
            num_return=2,
            length_penalty=alpha,
            max_lengths=max_lengths,
            static_shapes=True,
        )

    static = beam_search(
        model.next_fn,
        starts,
        model.cache(3),
        7,
        max_lengths=max_lengths,
        static_shapes=True,
        **kwargs,
    )
    for got in (static, static_xla(starts, max_lengths, tf.constant(0.6))):
        width = dynamic.ids.shape[2]
        assert got.ids.shape == (3, 2, 7)
        np.testing.assert_array_equal(got.ids[:, :, :width], dynamic.ids)
        assert np.all(got.ids[:, :, width:].numpy() == PAD)
        np.testing.assert_array_equal(got.lengths, dynamic.lengths)
        np.testing.assert_allclose(got.scores, dynamic.scores, rtol=1e-5)
        np.testing.assert_allclose(got.normalized_scores, dynamic.normalized_scores, rtol=1e-5)


@pytest.mark.parametrize("num_return, calls", [(1, 1), (2, 2)])
def test_early_exit_once_the_nbest_cannot_change(num_return, calls):
    # Every token is followed by EOS (0.9); A and B have 0.05 each.
    # N = 1: after step 0, [EOS] (0.9) beats the best alive [A] (0.05) and all it can
    # become. N = 2: step 1 finishes [A, EOS] (0.045); the best alive [A, A] (0.0025)
    # cannot beat it. The bound stops the loop long before max_length = 6.
    eps = 1e-3
    table = table_from_rows(6, 5, {}, default=[eps, eps, 0.9, 0.05, 0.05])
    model = TableModel(table, count_calls=True)
    result = beam_search(
        model.next_fn,
        tf.fill([2], BOS),
        model.cache(2),
        6,
        beam_size=2,
        num_return=num_return,
        length_penalty=0.0,
    )
    assert int(model.calls.numpy()) == calls
    assert result.ids.shape == (2, num_return, num_return)
    np.testing.assert_array_equal(result.ids[:, 0, :1], [[EOS], [EOS]])
    np.testing.assert_allclose(result.scores[:, 0], [table[0, BOS, EOS]] * 2, rtol=1e-6)
    if num_return == 2:
        np.testing.assert_array_equal(result.ids[:, 1], [[A, EOS], [A, EOS]])
        np.testing.assert_allclose(
            result.scores[:, 1], [table[0, BOS, A] + table[1, A, EOS]] * 2, rtol=1e-6
        )


def test_static_early_exit_stops_with_fixed_shapes_also_under_xla():
    eps = 1e-3
    table = table_from_rows(6, 5, {}, default=[eps, eps, 0.9, 0.05, 0.05])
    model = TableModel(table, count_calls=True)

    def run(early_exit):
        return beam_search(
            model.next_fn,
            tf.fill([2], BOS),
            model.cache(2),
            6,
            beam_size=2,
            num_return=2,
            length_penalty=0.0,
            static_shapes=True,
            early_exit=early_exit,
        )

    full = tf.function(run)(False)
    assert int(model.calls.numpy()) == 6
    model.calls.assign(0)
    early = tf.function(run)(True)
    assert int(model.calls.numpy()) == 2  # as in dynamic mode, see the test above
    for got in (early, tf.function(run, jit_compile=True)(True)):
        assert got.ids.shape == (2, 2, 6)
        np.testing.assert_array_equal(got.ids, full.ids)
        np.testing.assert_array_equal(got.lengths, full.lengths)
        np.testing.assert_allclose(got.scores, full.scores, rtol=1e-6)
        np.testing.assert_allclose(got.normalized_scores, full.normalized_scores, rtol=1e-6)


def test_tie_goes_to_the_finished_hypothesis_and_stops_at_once():
    # [EOS] and [A] have the same probability: no extension of [A] can beat [EOS].
    table = table_from_rows(4, 5, {}, default=[1e-4, 1e-4, 0.5, 0.5, 1e-4])
    model = TableModel(table, count_calls=True)
    result = beam_search(
        model.next_fn, tf.constant([BOS]), model.cache(1), 4, beam_size=2, length_penalty=0.0
    )
    np.testing.assert_array_equal(result.ids, [[[EOS]]])
    assert int(model.calls.numpy()) == 1


def test_beam_size_and_settings_as_tensors():
    # A serving-style graph: unknown batch size, every setting a per-request tensor.
    model = HistoryModel(vocab_size=6, seed=41, max_length=6)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def serve(starts, beam_size, num_return, alpha, max_lengths):
        cache = model.cache(tf.shape(starts)[0])
        return beam_search(
            model.next_fn,
            starts,
            cache,
            6,
            beam_size=beam_size,
            num_return=num_return,
            length_penalty=alpha,
            max_lengths=max_lengths,
        )

    cases = (
        ([BOS, 5], 2, 2, 0.6, [6, 4]),
        ([BOS, 5, 3], 4, 3, 0.0, [5, 6, 2]),
        ([4], 1, 1, 1.0, [6]),
    )
    for starts, k, n, alpha, limits in cases:
        got = serve(
            tf.constant(starts),
            tf.constant(k),
            tf.constant(n),
            tf.constant(alpha),
            tf.constant(limits),
        )
        want = beam_search(
            model.next_fn,
            tf.constant(starts),
            model.cache(len(starts)),
            6,
            beam_size=k,
            num_return=n,
            length_penalty=alpha,
            max_lengths=tf.constant(limits),
        )
        assert got.ids.shape[:2] == (len(starts), n)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
        np.testing.assert_allclose(got.normalized_scores, want.normalized_scores, rtol=1e-5)
    assert serve.experimental_get_tracing_count() == 1


def test_prefix_is_forced_on_all_beams_and_not_scored():
    model = HistoryModel(vocab_size=7, seed=51, max_length=8)
    starts, prefix_lengths = [BOS, BOS], [3, 1]
    kwargs = dict(
        prefix_ids=tf.constant([[5, 6, 3], [4, 0, 0]]), prefix_lengths=tf.constant(prefix_lengths)
    )
    result = beam_search(
        model.next_fn,
        tf.constant(starts),
        model.cache(2),
        8,
        beam_size=3,
        num_return=3,
        length_penalty=0.6,
        **kwargs,
    )
    np.testing.assert_array_equal(result.ids[0, :, :3], [[5, 6, 3]] * 3)
    np.testing.assert_array_equal(result.ids[1, :, :1], [[4]] * 3)
    assert_nbest_consistent(result, model, starts, 0.6, prefix_lengths=prefix_lengths)
    # Three distinct continuations: the search starts after the prompt.
    assert len({tuple(row) for row in result.ids[0].numpy()}) == 3
    greedy = greedy_search(model.next_fn, tf.constant(starts), model.cache(2), 8, **kwargs)
    beam_one = beam_search(
        model.next_fn,
        tf.constant(starts),
        model.cache(2),
        8,
        beam_size=1,
        length_penalty=0.0,
        **kwargs,
    )
    np.testing.assert_array_equal(beam_one.ids[:, 0], greedy.ids)
    np.testing.assert_allclose(beam_one.scores[:, 0], greedy.scores, rtol=1e-5)


def test_empty_slots_when_the_prompt_fills_max_length():
    model = HistoryModel(vocab_size=5, seed=61, max_length=3)
    result = beam_search(
        model.next_fn,
        tf.constant([BOS]),
        model.cache(1),
        3,
        beam_size=2,
        num_return=2,
        prefix_ids=tf.constant([[3, 4, 3]]),
        prefix_lengths=tf.constant([3]),
    )
    np.testing.assert_array_equal(result.ids, [[[3, 4, 3], [PAD, PAD, PAD]]])
    np.testing.assert_array_equal(result.lengths, [[3, 0]])
    np.testing.assert_array_equal(result.scores, [[0.0, -np.inf]])


def test_argument_errors():
    model = TableModel.random(4, 5, seed=71)
    args = (model.next_fn, tf.constant([BOS]), model.cache(1), 4)
    with pytest.raises(ValueError, match="num_return must be in"):
        beam_search(*args, beam_size=2, num_return=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_return must be <= beam_size"):
        beam_search(*args, beam_size=tf.constant(2), num_return=tf.constant(3))
    with pytest.raises(ValueError, match="beam_size must be a Python int"):
        beam_search(*args, beam_size=tf.constant(2), static_shapes=True)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        beam_search(*args, beam_size=0)
