"""Sampling with temperature, top-k and top-p, seeded with stateless random ops."""

from __future__ import annotations

import tensorflow as tf

from kerastx.decoding import _common
from kerastx.decoding._sequential import decode_sequential
from kerastx.decoding.filter_logits import filter_logits


def sample(
    next_fn,
    start_ids,
    cache,
    max_length,
    *,
    seed,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    max_lengths=None,
    prefix_ids=None,
    prefix_lengths=None,
    static_shapes=False,
    early_exit=False,
    pad_id=_common.PAD_ID,
    bos_id=_common.BOS_ID,
    eos_id=_common.EOS_ID,
):
    """Decodes a batch by sampling each token from the filtered next-token distribution.

    Step `i` draws output position `i` with `tf.random.stateless_categorical` from
    `filter_logits(logits, temperature, top_k, top_p)`, seeded with
    `tf.random.experimental.stateless_fold_in(seed, i)`. The same seed, batch and
    settings give the same output (the draws of one example depend on its row in the
    batch). `temperature = 0` means greedy (argmax). End of sequence, maximum lengths,
    forced prefix and the two modes behave as in `greedy_search`.

    Static and dynamic mode give identical results when both run without XLA; under
    `jit_compile=True` XLA's random-number generator may draw different (equally
    distributed) samples for the same seed.

    Args:
        next_fn: callable `(token_ids (B,) int32, cache, index scalar int32) ->
            (logits (B, V) float32, cache)`.
        start_ids: `(B,)` int tensor or None (`bos_id` for every example). Token fed at
            index 0.
        cache: nest (dict) of batch-major tensors: the initial cache.
        max_length: int, or scalar int tensor in dynamic mode. Global output-length bound.
        seed: `(2,)` int32/int64 tensor, tuple or list. Seed of the stateless draws.
        temperature: float or scalar tensor, default 1.0. >= 0; 0 = argmax.
        top_k: int or scalar int tensor, default 0 (no top-k filtering).
        top_p: float or scalar tensor in (0, 1], default 1.0 (no nucleus filtering).
        max_lengths: `(B,)` (or scalar) int tensor or None, default None (= max_length).
            Per-example maximum output length, clipped to `[1, max_length]`.
        prefix_ids: `(B, P)` int tensor or None. Forced tokens, right-padded with PAD.
        prefix_lengths: `(B,)` int tensor or None. Forced tokens per example.
        static_shapes: bool, default False. Exactly `max_length` steps with fixed
            shapes (XLA/TPU); `max_length` must then be a Python int. All sampling
            settings may stay tensors.
        early_exit: bool, default False. Static mode only: stop the loop once every
            sequence has ended instead of after exactly `max_length` steps (the loop
            condition reads the finished flags; XLA compiles it). Shapes and results are
            unchanged. Dynamic mode always stops early.
        pad_id: int, default 0. Emitted after the end.
        bos_id: int, default 1. Start token used when `start_ids` is None.
        eos_id: int, default 2. Ends a sequence.

    Returns:
        A `DecodeResult`: `ids (B, T)` int32, `lengths (B,)` int32, `scores (B,)`
        float32 (sum of the model's log-probabilities of the sampled tokens, before
        temperature and filtering), `normalized_scores (B,)` (= scores).

    Example:

    ```python
    result = sample(next_fn, start_ids, cache, 64, seed=[7, 0], temperature=0.8, top_p=0.9)
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
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or seed.shape.as_list() != [2]:
        raise ValueError(
            f"seed must be an int32 or int64 tensor of shape (2,). Received dtype "
            f"{seed.dtype.name} and shape {seed.shape}"
        )
    temperature = _common.scalar_float("temperature", temperature, minimum=0.0)
    top_k = _common.scalar_int("top_k", top_k, 0)
    top_p = _common.scalar_float("top_p", top_p, minimum=0.0, maximum=1.0, open_minimum=True)

    def argmax(logits):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    if _common.is_static(temperature):
        safe_temperature = temperature
    else:  # A zero temperature falls back to argmax below; 1.0 only avoids 0 / 0.
        safe_temperature = tf.where(temperature > 0, temperature, 1.0)

    def draw(logits, index):
        filtered = filter_logits(logits, safe_temperature, top_k, top_p)
        step_seed = tf.random.experimental.stateless_fold_in(seed, index)
        tokens = tf.random.stateless_categorical(filtered, 1, seed=step_seed, dtype=tf.int32)
        return tokens[:, 0]

    if _common.is_static(temperature):
        if temperature == 0.0:

            def choose(logits, index):
                return argmax(logits)

        else:
            choose = draw
    else:

        def choose(logits, index):
            return tf.where(temperature > 0, draw(logits, index), argmax(logits))

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
