"""Attention masks as pure functions: one convention for the whole package.

The convention (docs/architecture.md, "Masks"):

- A padding mask has shape `(B, T)`; `True` (or 1) marks a real token, `False` (or 0)
  padding. The padding id is 0, so `padding_mask(ids)` is `ids != 0`.
- An attention mask has shape `(B, T, S)` (or anything that broadcasts to it, such as
  `(1, T, S)` or `(B, 1, S)`); `True` means query `t` may attend key `s`.
- The decoder self-attention is causal. With a key/value cache of length `T_max` and a
  query block starting at position `index`, the causal mask is the rectangle
  `(T_q, T_max)` in which query `i` may attend keys `0 .. index + i`.

Every function returns a boolean tensor and accepts symbolic (traced) lengths and
indices, so the masks work inside `tf.function`, `tf.while_loop` and XLA.
"""

from __future__ import annotations

from keras import ops

from kerastx.special_ids import PAD_ID


def padding_mask(token_ids, pad_id: int = PAD_ID):
    """Returns the padding mask of a batch of token ids.

    Args:
        token_ids: int tensor of shape `(B, T)`.
        pad_id: int. The padding id. Defaults to 0.

    Returns:
        bool tensor of shape `(B, T)`, `True` at real tokens.
    """
    return ops.not_equal(token_ids, pad_id)


def causal_mask(query_length, key_length=None, index=0):
    """Returns the causal mask, rectangular when a cache is in use.

    Query `i` (at absolute position `index + i`) may attend keys `0 .. index + i`. Without
    a cache, `key_length == query_length` and `index == 0`, which gives the usual lower
    triangle. With a cache of length `T_max`, pass `key_length=T_max` and the position of
    the first query in `index`.

    Args:
        query_length: int or scalar int tensor. Number of queries `T_q`.
        key_length: int, scalar int tensor or None. Number of keys `T_k`; defaults to
            `query_length`.
        index: int or scalar int tensor. Absolute position of the first query. Defaults
            to 0.

    Returns:
        bool tensor of shape `(1, T_q, T_k)`.

    Example:

    >>> causal_mask(2, 4, index=1)  # query 0 sits at position 1
    [[[True, True, False, False],
      [True, True, True,  False]]]
    """
    if key_length is None:
        key_length = query_length
    query_positions = ops.arange(query_length, dtype="int32") + ops.cast(index, "int32")
    key_positions = ops.arange(key_length, dtype="int32")
    mask = ops.greater_equal(query_positions[:, None], key_positions[None, :])
    return mask[None, :, :]


def key_padding_attention_mask(key_padding_mask):
    """Turns a key padding mask `(B, S)` into an attention mask `(B, 1, S)`.

    Every query may attend every real key; padded keys are blocked.

    Args:
        key_padding_mask: bool or int tensor of shape `(B, S)`, 1 = real token.

    Returns:
        bool tensor of shape `(B, 1, S)`.
    """
    return ops.cast(key_padding_mask, "bool")[:, None, :]


def merge_masks(*masks):
    """Combines attention masks with a logical AND, skipping `None`.

    Args:
        *masks: bool or int tensors broadcastable to `(B, T, S)`, or None.

    Returns:
        The bool conjunction of the given masks (broadcast), or None if all are None.
    """
    merged = None
    for mask in masks:
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        merged = mask if merged is None else ops.logical_and(merged, mask)
    return merged


def self_attention_mask(length, padding_mask=None, causal=False, attention_mask=None):
    """The self-attention mask of a full (uncached) pass over `T` tokens.

    Args:
        length: int or scalar int tensor. The sequence length `T`.
        padding_mask: bool or int tensor `(B, T)` or None. Padded keys are blocked.
        causal: bool. Block future keys (`causal_mask(length)`). Defaults to False.
        attention_mask: bool or int tensor broadcastable to `(B, T, T)`, or None; merged
            with the others.

    Returns:
        bool tensor broadcastable to `(B, T, T)`, or None when nothing is masked.
    """
    masks = [attention_mask]
    if padding_mask is not None:
        masks.append(key_padding_attention_mask(padding_mask))
    if causal:
        masks.append(causal_mask(length))
    return merge_masks(*masks)
