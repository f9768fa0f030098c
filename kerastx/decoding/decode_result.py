"""The result structure shared by every decoder."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class DecodeResult(NamedTuple):
    """What `greedy_search`, `sample` and `beam_search` return.

    A `NamedTuple`, so it is a `tf.nest` structure: a `tf.function` or a SavedModel
    signature can return it (or a dict of its fields, `result._asdict()`).

    Greedy search and sampling return one hypothesis per example, with shapes `(B, ...)`;
    beam search returns the `N = num_return` best per example, best first, with shapes
    `(B, N, ...)`.

    Attributes:
        ids: int32 `(B, T)` or `(B, N, T)`. Output position `t` holds the token chosen from
            the logits of the `next_fn` call at index `t` (so a seq2seq result starts with
            the first target token, not with the start token). Forced prefix tokens are
            included; the EOS is included; every position after the end is PAD. In
            dynamic mode `T = max(lengths)`; in static mode `T = max_length`, and the
            first `max(lengths)` columns equal the dynamic result.
        lengths: int32 `(B,)` or `(B, N)`. Tokens up to and including EOS, forced prefix
            included; a sequence cut by its maximum length has that length and no EOS.
            0 only for a beam-search slot that holds no hypothesis (see `beam_search`).
        scores: float32 `(B,)` or `(B, N)`. Sum of the model's log-probabilities
            (log-softmax of the logits, temperature 1, no filtering) of the decoded
            tokens, EOS included; forced prefix tokens contribute nothing. `-inf` for an
            empty beam-search slot.
        normalized_scores: float32, same shape as `scores`. Beam search: `scores`
            divided by the GNMT length penalty `((5 + L) / 6) ** length_penalty`, with
            `L` the number of scored (non-forced) tokens; the n-best are ranked by it.
            Greedy search and sampling: equal to `scores`.
    """

    ids: tf.Tensor
    lengths: tf.Tensor
    scores: tf.Tensor
    normalized_scores: tf.Tensor
