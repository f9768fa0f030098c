"""Temperature, top-k and top-p (nucleus) filtering of logits."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastx.decoding import _common


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Scales logits by a temperature and masks the tokens outside top-k and top-p.

    Applied in this order: divide by `temperature`; keep the `top_k` highest tokens
    (by rank: on equal logits the lower id ranks first, so exactly `top_k` are kept);
    then, on the distribution renormalised over those, keep the smallest set of the
    most probable tokens whose total probability reaches `top_p` (a token is kept when
    the probability of the tokens ranked before it is below `top_p`; the best token is
    always kept). Masked tokens get `-inf`, so `softmax` gives them probability 0.

    Every setting may be a Python number or a scalar tensor (per-request values in one
    traced graph, XLA included: the filter sorts the full vocabulary, so no shape depends
    on `top_k`). A Python 0 for `top_k` and 1.0 for `top_p` skip the sort entirely.

    Args:
        logits: `(B, V)` float tensor.
        temperature: float or scalar tensor, default 1.0. Must be > 0.
        top_k: int or scalar int tensor, default 0. 0 = no top-k filtering.
        top_p: float or scalar tensor in (0, 1], default 1.0. 1.0 = no top-p filtering.

    Returns:
        `(B, V)` float32 tensor: `logits / temperature` with the filtered-out tokens set
        to `-inf`.

    Example:

    ```python
    filtered = filter_logits(logits, temperature=0.8, top_k=40, top_p=0.95)
    tokens = tf.random.stateless_categorical(filtered, 1, seed=[1, 2])[:, 0]
    ```
    """
    temperature = _common.scalar_float("temperature", temperature, minimum=0.0, open_minimum=True)
    top_k = _common.scalar_int("top_k", top_k, 0)
    top_p = _common.scalar_float("top_p", top_p, minimum=0.0, maximum=1.0, open_minimum=True)
    logits = tf.cast(logits, tf.float32) / temperature  # (B, V)
    use_top_k = not (_common.is_static(top_k) and top_k == 0)
    use_top_p = not (_common.is_static(top_p) and top_p == 1.0)
    if not (use_top_k or use_top_p):
        return logits
    vocab_size = _common.dim(logits, 1)
    sorted_logits, order = tf.math.top_k(logits, k=vocab_size)  # (B, V) each, descending
    rank = tf.range(vocab_size)[None, :]  # (1, V)
    keep = tf.ones_like(sorted_logits, tf.bool)  # (B, V), in sorted order
    if use_top_k:
        keep &= (rank < top_k) | (top_k <= 0)
    if use_top_p:
        probs = tf.nn.softmax(tf.where(keep, sorted_logits, -np.inf))  # (B, V)
        mass_before = tf.math.cumsum(probs, axis=-1, exclusive=True)
        keep &= (mass_before < top_p) | (rank == 0)
    # Back from sorted order to vocabulary order.
    batch_index = tf.broadcast_to(tf.range(tf.shape(logits)[0])[:, None], tf.shape(order))
    positions = tf.stack([batch_index, order], axis=-1)  # (B, V, 2)
    keep = tf.tensor_scatter_nd_update(tf.zeros_like(keep), positions, keep)
    return tf.where(keep, logits, -np.inf)
