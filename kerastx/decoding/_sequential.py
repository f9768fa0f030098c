"""One-hypothesis decoding loop shared by greedy search and sampling (private)."""

from __future__ import annotations

import tensorflow as tf

from kerastx.decoding import _common
from kerastx.decoding.decode_result import DecodeResult


def decode_sequential(
    next_fn, inputs, cache, choose_fn, *, eos_id, pad_id, static_shapes, early_exit=False
):
    """Decodes one hypothesis per example, choosing each token with `choose_fn`.

    Args:
        next_fn: callable `(token_ids (B,), cache, index) -> (logits (B, V), cache)`.
        inputs: `_common.Inputs`.
        cache: nest of batch-major tensors, the initial cache.
        choose_fn: callable `(logits (B, V) float32, index) -> token_ids (B,) int32`.
        eos_id: int. End-of-sequence token.
        pad_id: int. Token emitted after the end.
        static_shapes: bool. Fixed shapes, `ids (B, max_length)` (True), or `ids` cut to
            the longest output (False). Dynamic mode stops once every sequence has ended.
        early_exit: bool, default False. Static mode only: stop once every sequence has
            ended (same shapes and results) instead of running exactly `max_length` steps.

    Returns:
        A `DecodeResult` with `ids (B, T)`, `lengths (B,)`, `scores (B,)`,
        `normalized_scores (B,)` (= scores).
    """
    batch_size, max_length = inputs.batch_size, inputs.max_length
    max_lengths, prefix_ids, prefix_lengths = (
        inputs.max_lengths,
        inputs.prefix_ids,
        inputs.prefix_lengths,
    )

    def body(index, tokens, cache, ids, finished, lengths, scores):
        state = (index, tokens, cache, ids, finished, lengths, scores)
        logits, cache = next_fn(tokens, cache, index)
        logits = tf.cast(logits, tf.float32)  # (B, V)
        forced = index < prefix_lengths  # (B,)
        tokens = tf.where(
            forced, _common.forced_tokens(prefix_ids, index), choose_fn(logits, index)
        )
        tokens = tf.where(finished, pad_id, tokens)  # (B,)
        token_log_probs = tf.gather(tf.nn.log_softmax(logits), tokens, batch_dims=1)  # (B,)
        scores += tf.where(finished | forced, 0.0, token_log_probs)
        ids = _common.write_column(ids, index, tokens)  # (B, T)
        lengths += tf.cast(~finished, tf.int32)
        finished |= tf.equal(tokens, eos_id) | (index + 1 >= max_lengths)
        new_state = (index + 1, tokens, cache, ids, finished, lengths, scores)
        return _common.keep_shapes(new_state, state)

    if static_shapes and not early_exit:

        def cond(index, *_):
            return index < max_length

    elif static_shapes:  # A data-dependent condition: XLA compiles it into its while loop.

        def cond(index, tokens, cache, ids, finished, *_):
            return (index < max_length) & ~tf.reduce_all(finished)

    else:

        def cond(index, tokens, cache, ids, finished, *_):
            return (index < tf.reduce_max(max_lengths)) & ~tf.reduce_all(finished)

    state = (
        tf.constant(0, tf.int32),
        inputs.start_ids,
        cache,
        tf.fill([batch_size, max_length], tf.constant(pad_id, tf.int32)),
        tf.zeros([batch_size], tf.bool),
        tf.zeros([batch_size], tf.int32),
        tf.zeros([batch_size], tf.float32),
    )
    _, _, _, ids, _, lengths, scores = tf.while_loop(
        cond, body, state, maximum_iterations=max_length if static_shapes else None
    )
    if not static_shapes:
        ids = _common.trim(ids, lengths)
    return DecodeResult(ids=ids, lengths=lengths, scores=scores, normalized_scores=scores)
