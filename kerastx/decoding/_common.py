"""Helpers shared by the decoders (private): argument checks, inputs, buffers.

Everything here is graph code that also runs eagerly and under XLA
(`tf.function(jit_compile=True)`): no Python control flow on tensor values, and no op
whose output shape depends on a tensor value unless the caller is in dynamic mode.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import tensorflow as tf

# The decoders' default special ids (re-exported from their one owner).
from kerastx.special_ids import BOS_ID as BOS_ID
from kerastx.special_ids import EOS_ID as EOS_ID
from kerastx.special_ids import PAD_ID as PAD_ID


def is_static(value) -> bool:
    """True for a Python (or NumPy) number, False for a tensor or anything else."""
    return isinstance(value, numbers.Number) and not tf.is_tensor(value)


def scalar_int(name, value, minimum, *, static_shapes=False, maximum=None):
    """Checks an integer setting given as a Python int or a scalar tensor.

    Args:
        name: str. Argument name, used in error messages.
        value: int or scalar integer tensor.
        minimum: int. Smallest allowed value.
        static_shapes: bool, default False. When True the value must be a Python int.
        maximum: int or None, default None. Largest allowed value when both are Python
            ints (the caller asserts mixed cases).

    Returns:
        The Python int, or an int32 scalar tensor (with a runtime assertion attached
        in graph mode; XLA compiles assertions away).

    Raises:
        ValueError: a Python value out of range, or a tensor where static_shapes needs
            a Python int.
    """
    if is_static(value):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer. Received: {name}={value!r}")
        value = int(value)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise ValueError(f"{name} must be {bound}. Received: {name}={value}")
        return value
    if static_shapes:
        raise ValueError(
            f"{name} must be a Python int when static_shapes=True (it fixes a shape). "
            f"Received: {name}={value!r}"
        )
    value = tf.cast(tf.convert_to_tensor(value), tf.int32)
    if value.shape.rank != 0:
        raise ValueError(f"{name} must be a scalar. Received shape {value.shape}")
    tf.debugging.assert_greater_equal(value, minimum, message=f"{name} must be >= {minimum}")
    return value


def scalar_float(name, value, *, minimum=None, maximum=None, open_minimum=False):
    """Checks a float setting given as a Python number or a scalar tensor.

    Args:
        name: str. Argument name, used in error messages.
        value: float or scalar float tensor.
        minimum: float or None, default None. Lower bound.
        maximum: float or None, default None. Upper bound (inclusive).
        open_minimum: bool, default False. Whether the lower bound is excluded.

    Returns:
        The Python float, or a float32 scalar tensor with runtime assertions.

    Raises:
        ValueError: a Python value out of range or a tensor that is not a scalar.
    """
    if is_static(value):
        value = float(value)
        low_ok = minimum is None or (value > minimum if open_minimum else value >= minimum)
        if not low_ok or (maximum is not None and value > maximum):
            low = "(" if open_minimum else "["
            raise ValueError(
                f"{name} must be in {low}{minimum}, {maximum}]. Received: {name}={value}"
            )
        return value
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    if value.shape.rank != 0:
        raise ValueError(f"{name} must be a scalar. Received shape {value.shape}")
    if minimum is not None:
        check = tf.debugging.assert_greater if open_minimum else tf.debugging.assert_greater_equal
        check(value, float(minimum), message=f"{name} is below {minimum}")
    if maximum is not None:
        tf.debugging.assert_less_equal(value, float(maximum), message=f"{name} > {maximum}")
    return value


class Inputs(NamedTuple):
    """Decoder inputs after checking and normalisation."""

    start_ids: tf.Tensor  # (B,) int32
    batch_size: int | tf.Tensor  # static when known
    max_length: int | tf.Tensor  # Python int in static mode
    max_lengths: tf.Tensor  # (B,) int32, each in [1, max_length]
    prefix_ids: tf.Tensor  # (B, P + 1) int32: the prefix plus one PAD column
    prefix_lengths: tf.Tensor  # (B,) int32, each in [0, P]


def prepare_inputs(
    start_ids,
    cache,
    max_length,
    max_lengths,
    prefix_ids,
    prefix_lengths,
    *,
    bos_id,
    pad_id,
    static_shapes,
):
    """Checks and normalises the arguments every decoder shares.

    Args:
        start_ids: `(B,)` int tensor or None (then BOS, with `B` from the first cache
            leaf).
        cache: nest of batch-major tensors.
        max_length: int, or scalar int tensor in dynamic mode.
        max_lengths: `(B,)` or scalar int tensor, or None (= max_length).
        prefix_ids: `(B, P)` int tensor or None.
        prefix_lengths: `(B,)` int tensor or None; given together with prefix_ids.
        bos_id: int. Start token used when start_ids is None.
        pad_id: int. Padding token.
        static_shapes: bool. Whether shapes must be static (max_length a Python int).

    Returns:
        An `Inputs`.
    """
    if start_ids is None:
        leaves = tf.nest.flatten(cache)
        if not leaves:
            raise ValueError("start_ids is None and the cache is empty: cannot infer B.")
        start_ids = tf.fill([dim(leaves[0], 0)], bos_id)
    start_ids = tf.cast(tf.convert_to_tensor(start_ids), tf.int32)
    if start_ids.shape.rank != 1:
        raise ValueError(f"start_ids must have shape (B,). Received shape {start_ids.shape}")
    batch_size = dim(start_ids, 0)
    max_length = scalar_int("max_length", max_length, 1, static_shapes=static_shapes)
    if max_lengths is None:
        max_lengths = tf.fill([batch_size], tf.constant(max_length, tf.int32))
    else:
        max_lengths = tf.cast(tf.convert_to_tensor(max_lengths), tf.int32)
        if max_lengths.shape.rank not in (0, 1):
            raise ValueError(f"max_lengths must have shape (B,). Received {max_lengths.shape}")
        max_lengths = tf.broadcast_to(max_lengths, [batch_size])
        max_lengths = tf.clip_by_value(max_lengths, 1, max_length)
    if (prefix_ids is None) != (prefix_lengths is None):
        raise ValueError("prefix_ids and prefix_lengths must be given together.")
    if prefix_ids is None:
        prefix_ids = tf.fill([batch_size, 1], pad_id)
        prefix_lengths = tf.zeros([batch_size], tf.int32)
    else:
        prefix_ids = tf.cast(tf.convert_to_tensor(prefix_ids), tf.int32)
        if prefix_ids.shape.rank != 2:
            raise ValueError(f"prefix_ids must have shape (B, P). Received {prefix_ids.shape}")
        prefix_lengths = tf.cast(tf.convert_to_tensor(prefix_lengths), tf.int32)
        prefix_lengths = tf.clip_by_value(prefix_lengths, 0, dim(prefix_ids, 1))
        prefix_ids = tf.pad(prefix_ids, [[0, 0], [0, 1]], constant_values=pad_id)
    return Inputs(start_ids, batch_size, max_length, max_lengths, prefix_ids, prefix_lengths)


def dim(x, axis):
    """The size of `x` along `axis`: a Python int when static, else a scalar tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def forced_tokens(prefix_ids, index):
    """The prefix token for output position `index`, `(B,)` (PAD past the prefix)."""
    last = tf.shape(prefix_ids)[1] - 1
    return tf.gather(prefix_ids, tf.minimum(index, last), axis=1)


def write_column(buffer, index, values):
    """Writes `values (...)` at position `index` of the last axis of `buffer (..., T)`."""
    hit = tf.equal(tf.range(tf.shape(buffer)[-1]), index)  # (T,)
    return tf.where(hit, values[..., None], buffer)


def keep_shapes(new, old):
    """Gives every tensor of `new` at least the static shape of its twin in `old`.

    `tf.while_loop` needs loop variables to keep their static shape; ops such as
    `tf.gather` or a `next_fn` may lose static dimensions that are in fact unchanged.
    """

    def merge(n, o):
        n = tf.convert_to_tensor(n)
        n.set_shape(n.shape.merge_with(o.shape))
        return n

    return tf.nest.map_structure(merge, new, old)


def gnmt_penalty(length, alpha):
    """GNMT length penalty `((5 + length) / 6) ** alpha`, float32, shape of `length`."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def trim(ids, lengths):
    """Dynamic mode: cuts `ids (..., T)` to `max(lengths)` columns."""
    width = tf.maximum(tf.reduce_max(lengths), 0)
    return ids[..., :width]
