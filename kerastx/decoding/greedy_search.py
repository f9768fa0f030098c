"""Greedy search: the most probable token at every step."""

from __future__ import annotations

import tensorflow as tf

from kerastx.decoding import _common
from kerastx.decoding._sequential import decode_sequential


def greedy_search(
    next_fn,
    start_ids,
    cache,
    max_length,
    *,
    max_lengths=None,
    prefix_ids=None,
    prefix_lengths=None,
    static_shapes=False,
    early_exit=False,
    pad_id=_common.PAD_ID,
    bos_id=_common.BOS_ID,
    eos_id=_common.EOS_ID,
):
    """Decodes a batch by taking the argmax token at every step.

    Step `i` calls `next_fn(tokens, cache, i)` with the tokens of position `i` (the
    start tokens for `i = 0`) and chooses output position `i` from the returned logits
    (ties go to the lowest id). A sequence ends at its first EOS or at its maximum
    length; after that it emits PAD and its score stops changing.

    Args:
        next_fn: callable `(token_ids (B,) int32, cache, index scalar int32) ->
            (logits (B, V) float32, cache)`. Must keep every cache leaf's shape.
        start_ids: `(B,)` int tensor: the token fed at index 0 (BOS, or the first prompt
            token). None means `bos_id` for every example, with `B` read from axis 0 of
            the first cache leaf.
        cache: nest (dict) of tensors, all batch-major (axis 0 = B): the initial cache.
        max_length: int, or a scalar int tensor in dynamic mode. Global bound on the
            output length (number of `next_fn` calls); at most the cache size.
        max_lengths: `(B,)` (or scalar) int tensor, or None (default: `max_length`).
            Per-example maximum output length, forced prefix included, clipped to
            `[1, max_length]`.
        prefix_ids: `(B, P)` int tensor or None, default None. Forced tokens, right-padded
            with PAD: output position `t < prefix_lengths[b]` takes `prefix_ids[b, t]`
            instead of the argmax, and adds nothing to the score (a forced EOS ends the
            sequence like a chosen one). Output position `t` is the token fed at index
            `t + 1`: with BOS as start token pass the whole prompt, with the first prompt
            token as start token pass the rest of the prompt.
        prefix_lengths: `(B,)` int tensor or None, default None. Number of forced tokens
            per example, clipped to `[0, P]`. Given together with `prefix_ids`.
        static_shapes: bool, default False. False (dynamic): the loop stops as soon as
            every sequence has ended and `ids` has `max(lengths)` columns. True (static,
            for XLA/TPU): exactly `max_length` steps, fixed shapes, `ids` has
            `max_length` columns; `max_length` must then be a Python int. The first
            `max(lengths)` columns and all other outputs equal the dynamic result.
        early_exit: bool, default False. Static mode only: stop the loop once every
            sequence has ended instead of after exactly `max_length` steps (the loop
            condition reads the finished flags; XLA compiles it). Shapes and results are
            unchanged. Dynamic mode always stops early.
        pad_id: int, default 0. Emitted after the end.
        bos_id: int, default 1. Start token used when `start_ids` is None.
        eos_id: int, default 2. Ends a sequence (and is part of it).

    Returns:
        A `DecodeResult`: `ids (B, T)` int32, `lengths (B,)` int32, `scores (B,)` float32
        (sum of the chosen tokens' log-probabilities), `normalized_scores (B,)`
        (= scores).

    Example:

    ```python
    cache = model.init_cache(model.encode(source_ids), max_length=64)
    result = greedy_search(model.decode_step, tf.fill([batch], 1), cache, 64,
                           max_lengths=2 * source_lengths + 10)
    result.ids  # (B, T): target tokens, EOS included, PAD after
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

    def choose(logits, index):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    return decode_sequential(
        next_fn,
        inputs,
        cache,
        choose,
        eos_id=eos_id,
        pad_id=pad_id,
        static_shapes=static_shapes,
        early_exit=early_exit,
    )
