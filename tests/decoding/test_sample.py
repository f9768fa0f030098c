"""Tests for sample."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx.decoding import greedy_search, sample

from .fakes import BOS, PAD, HistoryModel, TableModel, replay_score


def assert_same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_one_equals_greedy(seed):
    model = HistoryModel(vocab_size=7, seed=seed, max_length=7)
    starts, max_lengths = tf.constant([BOS, 3, 6]), tf.constant([7, 5, 3])
    greedy = greedy_search(model.next_fn, starts, model.cache(3), 7, max_lengths=max_lengths)
    sampled = sample(
        model.next_fn, starts, model.cache(3), 7, seed=[seed, 9], top_k=1, max_lengths=max_lengths
    )
    assert_same(sampled, greedy)


def test_same_seed_same_output_and_seeds_differ():
    model = TableModel.random(8, 8, seed=2, scale=0.3)  # flat: many plausible sequences
    starts = tf.fill([16], BOS)

    def run(seed):
        return sample(model.next_fn, starts, model.cache(16), 8, seed=seed, top_p=0.95)

    first, again = run([4, 2]), run(tf.constant([4, 2], tf.int64))
    assert_same(first, again)
    traced = tf.function(run)(tf.constant([4, 2]))
    assert_same(traced, first)
    other = run([4, 3])
    assert not np.array_equal(other.ids.numpy(), first.ids.numpy())


def test_low_temperature_approaches_greedy():
    model = HistoryModel(vocab_size=7, seed=3, max_length=7)
    starts = tf.constant([BOS, 3, 4, 5, 6])
    greedy = greedy_search(model.next_fn, starts, model.cache(5), 7)

    def run(temperature):
        return sample(
            model.next_fn, starts, model.cache(5), 7, seed=[1, 1], temperature=temperature
        )

    assert_same(run(0.0), greedy)
    assert_same(run(tf.constant(0.0)), greedy)
    assert_same(run(1e-4), greedy)
    assert not np.array_equal(run(3.0).ids.numpy()[:, :3], greedy.ids.numpy()[:, :3])


def test_frequencies_match_the_filtered_distribution():
    logits = np.array([0.5, 2.0, 1.0, -1.0, 1.5, 0.2, 1.8, 0.0], np.float32)
    temperature, top_k, top_p = 0.8, 4, 0.8
    # By hand: scaled = logits / 0.8; top 4 are ids 1, 6, 4, 2; renormalised, the
    # nucleus of 0.8 stops once the mass before a token reaches 0.8.
    scaled = logits / temperature
    order = np.argsort(-scaled)[:top_k]
    probs = np.exp(scaled[order] - scaled[order].max())
    probs /= probs.sum()
    before = np.concatenate([[0.0], np.cumsum(probs)[:-1]])
    nucleus = order[before < top_p]
    expected = np.zeros(8)
    expected[nucleus] = np.exp(scaled[nucleus] - scaled[nucleus].max())
    expected /= expected.sum()
    assert set(nucleus) == {1, 6, 4}  # id 2 is cut by top-p, ids 0, 3, 5, 7 by top-k

    batch = 20000

    def next_fn(tokens, cache, index):
        return tf.tile(tf.constant(logits)[None], [tf.shape(tokens)[0], 1]), cache

    result = sample(
        next_fn,
        tf.fill([batch], BOS),
        {},
        1,
        seed=[7, 7],
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    counts = np.bincount(result.ids.numpy()[:, 0], minlength=8) / batch
    assert np.all(counts[expected == 0] == 0)
    np.testing.assert_allclose(counts, expected, atol=0.015)


def test_each_step_draws_fresh_randomness():
    # The same uniform distribution over 5 tokens at every step: reusing one seed for all
    # steps would repeat the first draw along every row.
    def next_fn(tokens, cache, index):
        logits = tf.constant([-1e9, -1e9, -1e9, 0.0, 0.0, 0.0, 0.0, 0.0])
        return tf.tile(logits[None], [tf.shape(tokens)[0], 1]), cache

    result = sample(next_fn, tf.fill([8], BOS), {}, 6, seed=[2, 2])
    ids = result.ids.numpy()
    assert ids.shape == (8, 6) and set(np.unique(ids)) <= {3, 4, 5, 6, 7}
    assert sum(len(set(row)) > 1 for row in ids) >= 6


def test_scores_are_the_model_log_probs_and_prefix_is_forced():
    model = HistoryModel(vocab_size=7, seed=4, max_length=8)
    starts, prefix_lengths = [BOS, BOS, 3], [2, 0, 1]
    result = sample(
        model.next_fn,
        tf.constant(starts),
        model.cache(3),
        8,
        seed=[3, 3],
        temperature=1.5,
        top_p=0.9,
        prefix_ids=tf.constant([[5, 4], [0, 0], [6, 0]]),
        prefix_lengths=tf.constant(prefix_lengths),
    )
    np.testing.assert_array_equal(result.ids[0, :2], [5, 4])
    np.testing.assert_array_equal(result.ids[2, :1], [6])
    for b, start in enumerate(starts):
        length = int(result.lengths[b])
        ids = result.ids[b].numpy()
        assert np.all(ids[length:] == PAD)
        score = replay_score(model, start, ids[:length], prefix_length=prefix_lengths[b])
        np.testing.assert_allclose(result.scores[b], score, rtol=1e-5)


def test_static_equals_dynamic_and_xla_is_reproducible():
    model = HistoryModel(vocab_size=7, seed=5, max_length=7)
    starts, max_lengths = tf.constant([BOS, 3, 4, 5]), tf.constant([7, 4, 6, 2])
    kwargs = dict(temperature=1.2, top_k=5, top_p=0.9, max_lengths=max_lengths)
    dynamic = sample(model.next_fn, starts, model.cache(4), 7, seed=[5, 5], **kwargs)
    static = sample(
        model.next_fn, starts, model.cache(4), 7, seed=[5, 5], static_shapes=True, **kwargs
    )
    width = dynamic.ids.shape[1]
    assert static.ids.shape == (4, 7)
    np.testing.assert_array_equal(static.ids[:, :width], dynamic.ids)
    assert np.all(static.ids[:, width:].numpy() == PAD)
    np.testing.assert_array_equal(static.lengths, dynamic.lengths)

    @tf.function(jit_compile=True)
    def xla(seed, temperature, top_k, top_p):
        return sample(
            model.next_fn,
            starts,
            model.cache(4),
            7,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_lengths=max_lengths,
            static_shapes=True,
        )

    settings = (tf.constant([5, 5]), tf.constant(1.2), tf.constant(5), tf.constant(0.9))
    first, again = xla(*settings), xla(*settings)
    assert_same(first, again)
    assert np.all(first.lengths.numpy() <= max_lengths.numpy())
    greedy = greedy_search(model.next_fn, starts, model.cache(4), 7, max_lengths=max_lengths)
    top_one = xla(tf.constant([5, 5]), tf.constant(1.2), tf.constant(1), tf.constant(1.0))
    np.testing.assert_array_equal(top_one.ids[:, : greedy.ids.shape[1]], greedy.ids)


def test_static_early_exit_gives_the_same_samples():
    model = HistoryModel(vocab_size=7, seed=8, max_length=9)
    starts = tf.constant([BOS, 3, 4, 5])

    def run(early_exit):
        return sample(
            model.next_fn,
            starts,
            model.cache(4),
            9,
            seed=[3, 1],
            top_p=0.9,
            static_shapes=True,
            early_exit=early_exit,
        )

    full, early = run(False), run(True)
    assert early.ids.shape == (4, 9)
    for a, b in zip(early, full):
        np.testing.assert_array_equal(a, b)


def test_settings_as_tensors_in_one_traced_graph():
    model = HistoryModel(vocab_size=7, seed=6, max_length=6)
    starts = tf.constant([BOS, 4, 5])

    @tf.function(
        input_signature=[
            tf.TensorSpec([2], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def serve(seed, temperature, top_k, top_p, max_lengths):
        return sample(
            model.next_fn,
            starts,
            model.cache(3),
            6,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_lengths=max_lengths,
        )

    for seed, temperature, top_k, top_p, limits in (
        ([1, 2], 1.0, 0, 1.0, [6, 6, 6]),
        ([3, 4], 0.7, 3, 0.8, [2, 6, 4]),
        ([5, 6], 0.0, 0, 1.0, [6, 3, 6]),
    ):
        got = serve(
            tf.constant(seed),
            tf.constant(temperature),
            tf.constant(top_k),
            tf.constant(top_p),
            tf.constant(limits),
        )
        want = sample(
            model.next_fn,
            starts,
            model.cache(3),
            6,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_lengths=tf.constant(limits),
        )
        assert_same(got, want)
    assert serve.experimental_get_tracing_count() == 1


def test_argument_errors():
    model = TableModel.random(4, 5, seed=7)
    args = (model.next_fn, tf.constant([BOS]), model.cache(1), 4)
    with pytest.raises(ValueError, match="seed must be"):
        sample(*args, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seed must be"):
        sample(*args, seed=[1.0, 2.0])
    with pytest.raises(ValueError, match="temperature must be in"):
        sample(*args, seed=[1, 2], temperature=-1.0)
