"""Beam search with the GNMT length penalty and n-best output."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastx.decoding import _common
from kerastx.decoding.decode_result import DecodeResult


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
    b, t = inputs.batch_size, inputs.max_length
    max_lengths, prefix_ids, prefix_lengths = (
        inputs.max_lengths,
        inputs.prefix_ids,
        inputs.prefix_lengths,
    )
    neg_inf = tf.constant(-np.inf, tf.float32)

    def body(*state):
        index, tokens, cache, alive_seq, alive_logp = state[:5]
        fin_seq, fin_norm, fin_logp, fin_len, fin_valid, done = state[5:]
        logits, cache = next_fn(tokens, cache, index)  # (B*K, V)
        v = _common.dim(logits, 1)
        if isinstance(v, int) and v < 2:
            raise ValueError(f"beam_search needs a vocabulary of >= 2 tokens. Received V={v}")
        log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [b, k, v])
        # Forced positions: only the prompt token, with log-probability 0.
        forced = index < prefix_lengths  # (B,)
        forced_row = tf.where(
            tf.range(v)[None, :] == _common.forced_tokens(prefix_ids, index)[:, None],
            0.0,
            neg_inf,
        )  # (B, V)
        log_probs = tf.where(forced[:, None, None], forced_row[:, None, :], log_probs)

        # The 2K best extensions of the alive hypotheses.
        candidates = tf.reshape(alive_logp[:, :, None] + log_probs, [b, k * v])  # (B, K*V)
        top_logp, top_index = tf.math.top_k(candidates, k=2 * k)  # (B, 2K)
        top_beam, top_token = top_index // v, top_index % v
        top_seq = tf.gather(alive_seq, top_beam, batch_dims=1)  # (B, 2K, T)
        top_seq = _common.write_column(top_seq, index, top_token)
        is_eos = tf.equal(top_token, eos_id)
        last_step = index + 1 >= max_lengths  # (B,)

        # Alive: the K best extensions without EOS.
        alive_score = tf.where(is_eos, neg_inf, top_logp)
        new_alive_logp, pick = tf.math.top_k(alive_score, k=k)  # (B, K)
        new_alive_seq = tf.gather(top_seq, pick, batch_dims=1)  # (B, K, T)
        parent = tf.gather(top_beam, pick, batch_dims=1)  # (B, K)
        new_tokens = tf.gather(top_token, pick, batch_dims=1)  # (B, K)

        # Finished: extensions among the first K that end with EOS (or at the last step).
        in_first_k = tf.range(2 * k)[None, :] < k  # (1, 2K)
        finishing = (is_eos | last_step[:, None]) & in_first_k & (top_logp > neg_inf)
        scored = index + 1 - tf.minimum(prefix_lengths, index + 1)  # (B,)
        norm = tf.where(finishing, top_logp / _common.gnmt_penalty(scored, alpha)[:, None], neg_inf)
        pool_norm, pool = tf.math.top_k(tf.concat([fin_norm, norm], 1), k=k)  # (B, K)

        def from_pool(old, new):
            return tf.gather(tf.concat([old, new], 1), pool, batch_dims=1)

        new_fin_seq = from_pool(fin_seq, top_seq)
        new_fin_logp = from_pool(fin_logp, tf.where(finishing, top_logp, neg_inf))
        new_fin_len = from_pool(fin_len, tf.fill(tf.shape(top_token), index + 1))
        new_fin_valid = from_pool(fin_valid, finishing)

        # Examples that had stopped keep their state.
        active = ~done  # (B,)

        def select(new, old):
            mask = tf.reshape(active, [-1] + [1] * (len(old.shape) - 1))
            return tf.where(mask, new, old)

        alive_seq, alive_logp = select(new_alive_seq, alive_seq), select(new_alive_logp, alive_logp)
        fin_seq, fin_norm = select(new_fin_seq, fin_seq), select(pool_norm, fin_norm)
        fin_logp, fin_len = select(new_fin_logp, fin_logp), select(new_fin_len, fin_len)
        fin_valid = select(new_fin_valid, fin_valid)
        parent = tf.where(active[:, None], parent, tf.range(k)[None, :])
        rows = tf.reshape(tf.range(b)[:, None] * k + parent, [-1])  # (B*K,)
        cache = tf.nest.map_structure(lambda x: tf.gather(x, rows, axis=0), cache)
        tokens = tf.reshape(tf.where(active[:, None], new_tokens, pad_id), [-1])  # (B*K,)

        # Stop an example once no alive hypothesis can beat its N-th finished one: future
        # scores only fall, and the penalty is largest at the shortest or longest length.
        next_scored = index + 2 - tf.minimum(prefix_lengths, index + 2)  # (B,)
        max_scored = max_lengths - tf.minimum(prefix_lengths, max_lengths)  # (B,)
        best_penalty = tf.maximum(
            _common.gnmt_penalty(next_scored, alpha), _common.gnmt_penalty(max_scored, alpha)
        )
        bound = alive_logp[:, 0] / best_penalty  # (B,)
        beaten = tf.gather(fin_valid, n - 1, axis=1) & (tf.gather(fin_norm, n - 1, axis=1) >= bound)
        done = done | last_step | beaten
        new_state = (index + 1, tokens, cache, alive_seq, alive_logp)
        new_state += (fin_seq, fin_norm, fin_logp, fin_len, fin_valid, done)
        return _common.keep_shapes(new_state, state)

    if static_shapes and not early_exit:

        def cond(index, *_):
            return index < t

    elif static_shapes:  # A data-dependent condition: XLA compiles it into its while loop.

        def cond(index, *args):
            return (index < t) & ~tf.reduce_all(args[-1])

    else:

        def cond(index, *args):
            return (index < tf.reduce_max(max_lengths)) & ~tf.reduce_all(args[-1])

    cache = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), cache)  # (B*K, ...)
    first_beam = tf.where(tf.range(k) == 0, 0.0, neg_inf)  # (K,): one hypothesis at start
    state = (
        tf.constant(0, tf.int32),
        tf.repeat(inputs.start_ids, k),  # (B*K,)
        cache,
        tf.fill([b, k, t], tf.constant(pad_id, tf.int32)),  # alive_seq
        tf.tile(first_beam[None, :], [b, 1]),  # alive_logp (B, K)
        tf.fill([b, k, t], tf.constant(pad_id, tf.int32)),  # fin_seq
        tf.fill([b, k], neg_inf),  # fin_norm
        tf.fill([b, k], neg_inf),  # fin_logp
        tf.zeros([b, k], tf.int32),  # fin_len
        tf.zeros([b, k], tf.bool),  # fin_valid
        tf.zeros([b], tf.bool),  # done
    )
    final = tf.while_loop(cond, body, state, maximum_iterations=t if static_shapes else None)
    fin_seq, fin_norm, fin_logp, fin_len, fin_valid = (x[:, :n] for x in final[5:10])
    ids = tf.where(fin_valid[:, :, None], fin_seq, pad_id)  # (B, N, T)
    lengths = tf.where(fin_valid, fin_len, 0)
    if not static_shapes:
        ids = _common.trim(ids, lengths)
    return DecodeResult(
        ids=ids,
        lengths=lengths,
        scores=tf.where(fin_valid, fin_logp, neg_inf),
        normalized_scores=tf.where(fin_valid, fin_norm, neg_inf),
    )
