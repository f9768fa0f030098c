"""Beam search with the GNMT length penalty and n-best output.

The search is one `tf.while_loop` over a `_BeamState`. Each iteration (`_step`) runs
the steps of the algorithm in order: score every one-token extension of the alive
hypotheses (`_log_probs`, `_force_prefix`), keep the `2K` best (`_top_candidates`),
choose the next alive beams (`_select_alive`), merge the new finished hypotheses into
the pool (`_merge_finished`), leave stopped examples as they were (`_keep_stopped`,
`_reorder_cache`) and apply the stopping bound (`_stopped`). `_nbest` reads the result
from the final pool.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from kerastx.decoding import _common
from kerastx.decoding.decode_result import DecodeResult

# A Python float: each op converts it to the float32 of its other operand, so one name
# serves eager, graph and XLA code without a module-level tensor.
_NEG_INF = float("-inf")


class _Finished(NamedTuple):
    """The pool of the `K` best finished hypotheses of every example, best first.

    A slot that holds no hypothesis has `valid` False and scores `-inf`.
    """

    ids: tf.Tensor  # (B, K, T) int32
    normalized_scores: tf.Tensor  # (B, K) float32: the GNMT ranking score
    scores: tf.Tensor  # (B, K) float32: sum of token log-probabilities
    lengths: tf.Tensor  # (B, K) int32: output positions, EOS and prefix included
    valid: tf.Tensor  # (B, K) bool


class _BeamState(NamedTuple):
    """The `tf.while_loop` state: a nest, so every field is read by name."""

    index: tf.Tensor  # () int32: the output position this iteration decides
    tokens: tf.Tensor  # (B*K,) int32: the tokens fed to next_fn at `index`
    cache: Any  # nest of (B*K, ...) tensors; row b * K + k is beam k of example b
    alive_ids: tf.Tensor  # (B, K, T) int32: hypotheses without EOS
    alive_scores: tf.Tensor  # (B, K) float32, best first; -inf for an empty beam
    finished: _Finished
    done: tf.Tensor  # (B,) bool: the example has stopped


class _Settings(NamedTuple):
    """What every step reads and none changes."""

    batch_size: int | tf.Tensor  # B
    beam_size: int | tf.Tensor  # K
    num_return: int | tf.Tensor  # N
    alpha: float | tf.Tensor  # GNMT length-penalty exponent
    max_lengths: tf.Tensor  # (B,) int32
    prefix_ids: tf.Tensor  # (B, P + 1) int32
    prefix_lengths: tf.Tensor  # (B,) int32
    eos_id: int
    pad_id: int


class _Candidates(NamedTuple):
    """The `2K` best one-token extensions of the alive hypotheses, best first."""

    scores: tf.Tensor  # (B, 2K) float32: summed log-probabilities
    beams: tf.Tensor  # (B, 2K) int32: the alive beam each one extends
    tokens: tf.Tensor  # (B, 2K) int32: the token it adds
    ids: tf.Tensor  # (B, 2K, T) int32: the extended hypothesis


def beam_search(
    next_fn,
    start_ids,
    cache,
    max_length,
    *,
    beam_size=4,
    num_return=1,
    length_penalty=0.6,
    max_lengths=None,
    prefix_ids=None,
    prefix_lengths=None,
    static_shapes=False,
    early_exit=False,
    pad_id=_common.PAD_ID,
    bos_id=_common.BOS_ID,
    eos_id=_common.EOS_ID,
):
    """Decodes a batch with beam search and returns the `num_return` best hypotheses.

    Each example keeps `K = beam_size` alive hypotheses (no EOS yet) and a pool of the
    `K` best finished ones. At step `i` every alive hypothesis is extended by every
    token; of the `2K` best extensions (by summed log-probability) the `K` best without
    EOS stay alive, and those that end with EOS *and* rank among the first `K` enter the
    finished pool (the rule of fairseq and Hugging Face, which makes `beam_size=1` with
    `length_penalty=0` exactly greedy search). At an example's last allowed position
    every extension among the first `K` is finished, EOS or not. Finished hypotheses are
    ranked by `normalized_score = score / ((5 + L) / 6) ** length_penalty` (GNMT), `L`
    the number of scored tokens. An example stops as soon as no alive hypothesis can
    still beat its `num_return`-th finished one (an exact bound, for any sign of
    `length_penalty`), or at its maximum length; the loop stops when all have stopped
    (dynamic mode) or after `max_length` steps (static mode), with identical results.

    The cache is tiled by `K` along axis 0 (`tf.repeat`: row `b * K + k` is beam `k` of
    example `b`, beams of one example adjacent) and after every step each leaf is
    reordered with `tf.gather` on axis 0, so `next_fn` sees `B * K` rows.

    Forced prefix: at positions `t < prefix_lengths[b]` every beam of example `b` takes
    `prefix_ids[b, t]`, with log-probability 0 (no score, and not counted in `L`), so the
    example holds a single hypothesis until the prompt ends; the search starts after it.

    Empty slots: when an example has fewer than `num_return` finished hypotheses (a
    vocabulary of fewer than `num_return` usable tokens, or a prompt that reaches the
    maximum length), the missing ones have `ids` all PAD, `lengths` 0 and scores `-inf`.

    Args:
        next_fn: callable `(token_ids (B*K,) int32, cache, index scalar int32) ->
            (logits (B*K, V) float32, cache)`, with `V >= 2`. Must keep every cache
            leaf's shape.
        start_ids: `(B,)` int tensor or None (`bos_id` for every example, `B` from the
            first cache leaf). Token fed at index 0, to every beam.
        cache: nest (dict) of tensors, batch-major with `B` rows (tiled here).
        max_length: int, or scalar int tensor in dynamic mode. Global output-length bound
            (at most the cache size).
        beam_size: int or scalar int tensor, default 4. `K >= 1`. A Python int in static
            mode (it fixes the shapes).
        num_return: int or scalar int tensor, default 1. `N`, `1 <= N <= K`. A Python int
            in static mode (it fixes the output shape).
        length_penalty: float or scalar tensor, default 0.6. GNMT `alpha`; 0 ranks by raw
            log-probability.
        max_lengths: `(B,)` (or scalar) int tensor or None, default None (= max_length).
            Per-example maximum output length, prefix included, clipped to
            `[1, max_length]`.
        prefix_ids: `(B, P)` int tensor or None. Forced tokens, right-padded with PAD.
        prefix_lengths: `(B,)` int tensor or None. Forced tokens per example.
        static_shapes: bool, default False. False: early exit and `T = max(lengths)`.
            True (XLA/TPU): exactly `max_length` steps with fixed shapes and
            `T = max_length`; `max_length`, `beam_size` and `num_return` must be Python
            ints (`length_penalty` and `max_lengths` may stay tensors).
        early_exit: bool, default False. Static mode only: stop the loop once every
            example has stopped instead of after exactly `max_length` steps; shapes and
            results are unchanged (the loop condition reads the `done` flags, which XLA
            compiles into its while loop). Dynamic mode always stops early.
        pad_id: int, default 0. Fills positions after the end.
        bos_id: int, default 1. Start token used when `start_ids` is None.
        eos_id: int, default 2. Ends a hypothesis.

    Returns:
        A `DecodeResult`, best first along axis 1: `ids (B, N, T)` int32,
        `lengths (B, N)` int32, `scores (B, N)` float32 (sum of token log-probabilities),
        `normalized_scores (B, N)` float32 (the ranking score, non-increasing along N).

    Example:

    ```python
    result = beam_search(next_fn, start_ids, cache, max_length=64, beam_size=5,
                         num_return=3, length_penalty=0.6)
    best_ids = result.ids[:, 0]  # (B, T)
    ```
    """
    inputs = _common.prepare_inputs(
        start_ids,
        cache,
        max_length,
        max_lengths,
        prefix_ids,
        prefix_lengths,
        bos_id=bos_id,
        pad_id=pad_id,
        static_shapes=static_shapes,
    )
    k, n, alpha = _check_settings(beam_size, num_return, length_penalty, static_shapes)
    settings = _Settings(
        batch_size=inputs.batch_size,
        beam_size=k,
        num_return=n,
        alpha=alpha,
        max_lengths=inputs.max_lengths,
        prefix_ids=inputs.prefix_ids,
        prefix_lengths=inputs.prefix_lengths,
        eos_id=eos_id,
        pad_id=pad_id,
    )
    cond = _loop_condition(inputs.max_length, inputs.max_lengths, static_shapes, early_exit)

    def body(state):
        return (_step(next_fn, state, settings),)

    state = _initial_state(inputs.start_ids, cache, inputs.max_length, settings)
    # A 1-tuple: given the NamedTuple itself, tf.while_loop would unpack its fields
    # into positional arguments of `cond` and `body`.
    (final,) = tf.while_loop(
        cond, body, (state,), maximum_iterations=inputs.max_length if static_shapes else None
    )
    return _nbest(final.finished, n, pad_id, static_shapes)


def _check_settings(beam_size, num_return, length_penalty, static_shapes):
    """Checks `K >= 1`, `1 <= N <= K` and the penalty; returns `(K, N, alpha)`.

    Each is a Python number or a scalar tensor; a bound that involves a tensor is a
    runtime assertion.
    """
    k = _common.scalar_int("beam_size", beam_size, 1, static_shapes=static_shapes)
    n = _common.scalar_int(
        "num_return",
        num_return,
        1,
        static_shapes=static_shapes,
        maximum=k if _common.is_static(k) else None,
    )
    if not (_common.is_static(k) and _common.is_static(n)):
        tf.debugging.assert_less_equal(n, k, message="num_return must be <= beam_size")
    alpha = _common.scalar_float("length_penalty", length_penalty)
    return k, n, alpha


def _initial_state(start_ids, cache, max_length, s):
    """The `_BeamState` before step 0: one hypothesis per example, no finished one.

    `start_ids (B,)` is fed to every beam, `cache` is tiled to `(B*K, ...)` rows and
    the id buffers are `max_length` wide.
    """
    b, k = s.batch_size, s.beam_size
    cache = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), cache)  # (B*K, ...)
    # Beams 1..K-1 start at -inf so that step 0 extends beam 0 only: K copies of the
    # same start would fill the beam with duplicates.
    first_beam = tf.where(tf.range(k) == 0, 0.0, _NEG_INF)  # (K,)
    pad = tf.constant(s.pad_id, tf.int32)
    return _BeamState(
        index=tf.constant(0, tf.int32),
        tokens=tf.repeat(start_ids, k),  # (B*K,)
        cache=cache,
        alive_ids=tf.fill([b, k, max_length], pad),
        alive_scores=tf.tile(first_beam[None, :], [b, 1]),  # (B, K)
        finished=_Finished(
            ids=tf.fill([b, k, max_length], pad),
            normalized_scores=tf.fill([b, k], _NEG_INF),
            scores=tf.fill([b, k], _NEG_INF),
            lengths=tf.zeros([b, k], tf.int32),
            valid=tf.zeros([b, k], tf.bool),
        ),
        done=tf.zeros([b], tf.bool),
    )


def _loop_condition(max_length, max_lengths, static_shapes, early_exit):
    """The `tf.while_loop` condition `_BeamState -> bool` of the mode (see `beam_search`)."""
    if static_shapes and not early_exit:
        return lambda state: state.index < max_length
    if static_shapes:  # A data-dependent condition: XLA compiles it into its while loop.
        return lambda state: (state.index < max_length) & ~tf.reduce_all(state.done)
    # Dynamic mode stops at the longest per-example bound even when T is larger.
    return lambda state: (state.index < tf.reduce_max(max_lengths)) & ~tf.reduce_all(state.done)


def _step(next_fn, state, s):
    """One loop iteration: decides output position `state.index` of every beam.

    Returns the next `_BeamState`, with the static shapes of `state`.
    """
    logits, cache = next_fn(state.tokens, state.cache, state.index)  # (B*K, V)
    log_probs = _log_probs(logits, s.batch_size, s.beam_size)  # (B, K, V)
    log_probs = _force_prefix(log_probs, state.index, s.prefix_ids, s.prefix_lengths)
    candidates = _top_candidates(state.alive_ids, state.alive_scores, log_probs, state.index, s)
    last_step = state.index + 1 >= s.max_lengths  # (B,)
    alive_ids, alive_scores, parents, tokens = _select_alive(candidates, s)
    finished = _merge_finished(state.finished, candidates, state.index, last_step, s)
    alive_ids, alive_scores, finished = _keep_stopped(
        state.done,
        (alive_ids, alive_scores, finished),
        (state.alive_ids, state.alive_scores, state.finished),
    )
    cache, tokens = _reorder_cache(cache, parents, tokens, state.done, s)
    done = _stopped(alive_scores, finished, state.index, state.done | last_step, s)
    new_state = _BeamState(
        index=state.index + 1,
        tokens=tokens,
        cache=cache,
        alive_ids=alive_ids,
        alive_scores=alive_scores,
        finished=finished,
        done=done,
    )
    return _common.keep_shapes(new_state, state)


def _log_probs(logits, b, k):
    """Token log-probabilities `(B, K, V)` float32 from `next_fn` logits `(B*K, V)`.

    Raises:
        ValueError: a static vocabulary of fewer than 2 tokens (the search needs EOS
            and at least one token that continues a hypothesis).
    """
    v = _common.dim(logits, 1)
    if isinstance(v, int) and v < 2:
        raise ValueError(f"beam_search needs a vocabulary of >= 2 tokens. Received V={v}")
    return tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [b, k, v])


def _force_prefix(log_probs, index, prefix_ids, prefix_lengths):
    """Makes the prompt token the only choice at forced positions, at no cost.

    Rows `(B, K, V)` of examples still in their prefix become 0 at `prefix_ids[b,
    index]` and `-inf` elsewhere, so every beam takes it and no score changes.
    """
    v = _common.dim(log_probs, 2)
    forced = index < prefix_lengths  # (B,)
    forced_row = tf.where(
        tf.range(v)[None, :] == _common.forced_tokens(prefix_ids, index)[:, None],
        0.0,
        _NEG_INF,
    )  # (B, V)
    return tf.where(forced[:, None, None], forced_row[:, None, :], log_probs)


def _top_candidates(alive_ids, alive_scores, log_probs, index, s):
    """The `2K` best one-token extensions, as `_Candidates`, token written at `index`.

    `2K` leaves `K` candidates without EOS even when `K` of them end with EOS.
    """
    k, v = s.beam_size, _common.dim(log_probs, 2)
    scores = tf.reshape(alive_scores[:, :, None] + log_probs, [s.batch_size, k * v])  # (B, K*V)
    top_scores, top_index = tf.math.top_k(scores, k=2 * k)  # (B, 2K)
    beams, tokens = top_index // v, top_index % v
    ids = tf.gather(alive_ids, beams, batch_dims=1)  # (B, 2K, T)
    ids = _common.write_column(ids, index, tokens)
    return _Candidates(scores=top_scores, beams=beams, tokens=tokens, ids=ids)


def _select_alive(candidates, s):
    """The `K` best candidates without EOS become the alive hypotheses.

    Returns:
        `(alive_ids (B, K, T), alive_scores (B, K), parents (B, K), tokens (B, K))`:
        `parents` the alive beam each extends (for the cache), `tokens` the next input.
    """
    scores = tf.where(tf.equal(candidates.tokens, s.eos_id), _NEG_INF, candidates.scores)
    alive_scores, pick = tf.math.top_k(scores, k=s.beam_size)  # (B, K)
    alive_ids = tf.gather(candidates.ids, pick, batch_dims=1)  # (B, K, T)
    parents = tf.gather(candidates.beams, pick, batch_dims=1)  # (B, K)
    tokens = tf.gather(candidates.tokens, pick, batch_dims=1)  # (B, K)
    return alive_ids, alive_scores, parents, tokens


def _merge_finished(finished, candidates, index, last_step, s):
    """Merges the candidates that finish at `index` into the pool of the `K` best.

    A candidate finishes when it ends with EOS or its example is at `last_step (B,)`,
    and it ranks among the first `K` (the fairseq and Hugging Face rule, see
    `beam_search`). Returns the new `_Finished`, best first by normalised score.
    """
    k = s.beam_size
    in_first_k = tf.range(2 * k)[None, :] < k  # (1, 2K)
    is_eos = tf.equal(candidates.tokens, s.eos_id)
    finishing = (is_eos | last_step[:, None]) & in_first_k & (candidates.scores > _NEG_INF)
    # Forced positions carry no score, so they do not count in the penalty length.
    scored = index + 1 - tf.minimum(s.prefix_lengths, index + 1)  # (B,)
    penalty = _common.gnmt_penalty(scored, s.alpha)[:, None]
    normalized = tf.where(finishing, candidates.scores / penalty, _NEG_INF)
    pool_normalized, pool = tf.math.top_k(
        tf.concat([finished.normalized_scores, normalized], 1), k=k
    )  # (B, K)

    def from_pool(old, new):
        return tf.gather(tf.concat([old, new], 1), pool, batch_dims=1)

    return _Finished(
        ids=from_pool(finished.ids, candidates.ids),
        normalized_scores=pool_normalized,
        scores=from_pool(finished.scores, tf.where(finishing, candidates.scores, _NEG_INF)),
        lengths=from_pool(finished.lengths, tf.fill(tf.shape(candidates.tokens), index + 1)),
        valid=from_pool(finished.valid, finishing),
    )


def _keep_stopped(done, new, old):
    """Examples already `done` keep their `old` tensors (nests of `(B, ...)`).

    The loop runs until every example has stopped: later steps must not change the
    result of an example already decided.
    """
    active = ~done  # (B,)

    def select(new, old):
        mask = tf.reshape(active, [-1] + [1] * (len(old.shape) - 1))
        return tf.where(mask, new, old)

    return tf.nest.map_structure(select, new, old)


def _reorder_cache(cache, parents, tokens, done, s):
    """Gives every beam the cache rows of its parent; returns `(cache, tokens (B*K,))`.

    `parents (B, K)` is the alive beam each new beam extends, `tokens (B, K)` what it
    feeds next. Examples already `done (B,)` keep their rows and are fed PAD.
    """
    active = ~done  # (B,)
    k = s.beam_size
    parents = tf.where(active[:, None], parents, tf.range(k)[None, :])
    rows = tf.reshape(tf.range(s.batch_size)[:, None] * k + parents, [-1])  # (B*K,)
    cache = tf.nest.map_structure(lambda x: tf.gather(x, rows, axis=0), cache)
    tokens = tf.reshape(tf.where(active[:, None], tokens, s.pad_id), [-1])  # (B*K,)
    return cache, tokens


def _stopped(alive_scores, finished, index, done, s):
    """`(B,)` bool: already `done`, or the n-best can no longer change.

    Future scores only fall (log-probabilities are <= 0), and the GNMT penalty is
    monotone in the length for either sign of `alpha`, so at any later length it is at
    most the larger of its values at the next and at the maximum length. The best alive
    score divided by that larger penalty therefore bounds the normalised score of every
    hypothesis still to come: an exact stop once the `N`-th finished one reaches it.
    """
    next_scored = index + 2 - tf.minimum(s.prefix_lengths, index + 2)  # (B,)
    max_scored = s.max_lengths - tf.minimum(s.prefix_lengths, s.max_lengths)  # (B,)
    best_penalty = tf.maximum(
        _common.gnmt_penalty(next_scored, s.alpha), _common.gnmt_penalty(max_scored, s.alpha)
    )
    bound = alive_scores[:, 0] / best_penalty  # (B,)
    nth_valid = tf.gather(finished.valid, s.num_return - 1, axis=1)
    beaten = nth_valid & (tf.gather(finished.normalized_scores, s.num_return - 1, axis=1) >= bound)
    return done | beaten


def _nbest(finished, n, pad_id, static_shapes):
    """The `N` best of the final pool as a `DecodeResult`.

    Empty slots get PAD ids, length 0 and `-inf` scores; dynamic mode cuts `ids` to
    the longest returned hypothesis.
    """
    finished = tf.nest.map_structure(lambda x: x[:, :n], finished)
    ids = tf.where(finished.valid[:, :, None], finished.ids, pad_id)  # (B, N, T)
    lengths = tf.where(finished.valid, finished.lengths, 0)
    if not static_shapes:
        ids = _common.trim(ids, lengths)
    return DecodeResult(
        ids=ids,
        lengths=lengths,
        scores=tf.where(finished.valid, finished.scores, _NEG_INF),
        normalized_scores=tf.where(finished.valid, finished.normalized_scores, _NEG_INF),
    )
