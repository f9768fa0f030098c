"""Decoding a trained model: the glue between a model's cache API and the decoders.

`decode_batch` is plain TensorFlow graph code (the same function is traced into the
exported SavedModel), so the in-framework decoder and the export decode identically.
Settings may be Python values or scalar tensors (per-request values in a SavedModel).
"""

from __future__ import annotations

import tensorflow as tf

from kerastx.config import DecodingConfig
from kerastx.decoding import beam_search, greedy_search, sample

STRATEGIES = ("greedy", "beam", "sample")
EOS_ID = 2


def encode_source(tokenizer, text, max_source_length: int):
    """Raw `(B,)` strings -> `(B, S)` int32 source ids: tokens cut to fit, then EOS.

    This is how the export and `predict` prepare input; the export's parity check
    compares it with the training pipeline's own encoding.
    """
    pieces = tokenizer.tokenize(text)[:, : max_source_length - 1]
    eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(text)[0], 1], EOS_ID))
    return tf.concat([tf.cast(pieces, tf.int32), eos], axis=1).to_tensor(default_value=0)


def settings_from_config(cfg: DecodingConfig, **overrides) -> dict:
    """The decoding settings of a `decoding:` section, with CLI overrides applied."""
    settings = {
        "strategy": cfg.strategy,
        "beam_size": cfg.beam_size,
        "n_best": cfg.n_best,
        "length_penalty": cfg.length_penalty,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
        "max_length_a": cfg.max_length_a,
        "max_length_b": cfg.max_length_b,
        "max_length": cfg.max_length,
    }
    for key, value in overrides.items():
        if value is not None and key in settings:
            settings[key] = value
    return settings


def _max_lengths(source_ids, a, b, max_length):
    """Per-example output bound `a * source_length + b`, clipped to [1, max_length]."""
    src_len = tf.reduce_sum(tf.cast(tf.not_equal(source_ids, 0), tf.float32), axis=1)
    bound = tf.cast(tf.math.ceil(tf.cast(a, tf.float32) * src_len), tf.int32) + tf.cast(b, tf.int32)
    return tf.clip_by_value(bound, 1, tf.cast(max_length, tf.int32))


def decode_batch(
    model,
    model_type: str,
    inputs: dict,
    settings: dict,
    static_shapes: bool = False,
    max_lengths=None,
):
    """Decodes one batch with the model's key/value cache.

    Args:
        model: a `Seq2SeqTransformer` or `DecoderLM`.
        model_type: str. "seq2seq" or "decoder_lm".
        inputs: dict. seq2seq: `source_ids (B, S)` and optional `condition`; decoder_lm:
            `prompt_ids (B, P)` (BOS + prompt tokens, right-padded) and optional
            `condition`.
        settings: dict from `settings_from_config` (values may be scalar tensors; the
            strategy and, with static shapes, max_length/beam_size must be Python).
        static_shapes: bool. Fixed shapes for XLA/TPU.
        max_lengths: `(B,)` int tensor or None. Tighter per-example output bounds; the
            default is `max_length_a * source length + max_length_b` (seq2seq) or
            `max_length` (LM).

    Returns:
        A `DecodeResult`; for beam search with shapes `(B, N, ...)`, N = n_best.
    """
    strategy = settings["strategy"]
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: {strategy!r}")
    max_length = settings["max_length"]
    condition = inputs.get("condition")
    extra: dict = {}
    if model_type == "seq2seq":
        source_ids = tf.cast(inputs["source_ids"], tf.int32)
        state = model.encode(source_ids, condition=condition)
        cache = model.init_cache(state, max_length)
        start_ids = None
        bounds = _max_lengths(
            source_ids, settings["max_length_a"], settings["max_length_b"], max_length
        )
    else:
        prompt = tf.cast(inputs["prompt_ids"], tf.int32)
        batch = tf.shape(prompt)[0]
        cache = model.init_cache(batch, max_length, condition=condition)
        prompt_len = tf.reduce_sum(tf.cast(tf.not_equal(prompt, 0), tf.int32), axis=1)
        # The prompt's first token (BOS) is fed at index 0; the rest are forced outputs.
        start_ids = prompt[:, 0]
        extra = {"prefix_ids": prompt[:, 1:], "prefix_lengths": prompt_len - 1}
        bounds = tf.fill([batch], tf.cast(max_length, tf.int32))
    if max_lengths is not None:
        bounds = tf.minimum(bounds, tf.cast(max_lengths, tf.int32))

    def next_fn(token_ids, cache, index):
        return model.decode_step(token_ids, cache, index)

    common = dict(max_lengths=bounds, static_shapes=static_shapes, **extra)
    if strategy == "greedy":
        return greedy_search(next_fn, start_ids, cache, max_length, **common)
    if strategy == "beam":
        return beam_search(
            next_fn,
            start_ids,
            cache,
            max_length,
            beam_size=settings["beam_size"],
            num_return=settings["n_best"],
            length_penalty=settings["length_penalty"],
            **common,
        )
    seed = tf.stack([tf.cast(settings["seed"], tf.int32), tf.constant(0, tf.int32)])
    return sample(
        next_fn,
        start_ids,
        cache,
        max_length,
        seed=seed,
        temperature=settings["temperature"],
        top_k=settings["top_k"],
        top_p=settings["top_p"],
        **common,
    )


def best_ids(result) -> tf.Tensor:
    """`(B, T)` ids of the best hypothesis (the first of an n-best list)."""
    ids = result.ids
    return ids[:, 0, :] if ids.shape.rank == 3 else ids


class Decoder:
    """A reusable, traced decoder of one model and one set of settings.

    Args:
        model: the model.
        model_type: str.
        settings: dict from `settings_from_config`.
    """

    def __init__(self, model, model_type: str, settings: dict):
        self.model = model
        self.model_type = model_type
        self.settings = dict(settings)
        self._fn = tf.function(self._decode, reduce_retracing=True)

    def _decode(self, inputs):
        return decode_batch(self.model, self.model_type, inputs, self.settings)

    def __call__(self, inputs: dict):
        return self._fn(inputs)
