"""Decoding a trained model: the glue between a model's cache API and the decoders.

`decode_batch` is plain TensorFlow graph code (the same function is traced into the
exported SavedModel), so the in-framework decoder and the export decode identically.
Settings may be Python values or scalar tensors (per-request values in a SavedModel);
`decode_request` chooses the strategy inside the graph from per-request tensors.

Conventions shared by `predict`, `evaluate` and `export`:

- seq2seq input: `source_ids (B, S)` = source tokens cut to `max_source_length - 1`, then
  EOS, 0-padded (`encode_source`; the training pipeline's encoding).
- decoder_lm input: `prompt_ids (B, P)` = BOS + prompt tokens (at most
  `max_prompt_length`), 0-padded (`encode_prompt`). The prompt is fed as forced tokens
  and the result holds only the continuation (ids, lengths and scores).
- Output lengths: seq2seq outputs have at most `ceil(max_length_a * S) + max_length_b`
  tokens (`S` = source tokens with EOS), capped by `max_length`; a decoder_lm's prompt
  plus continuation have at most `max_length` tokens (BOS not counted; `max_length_a/b`
  are not used).
- `beam_size == 1` with `n_best == 1` is greedy search, whatever the strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

from kerastx.decoding import DecodeResult, beam_search, greedy_search, sample
from kerastx.special_ids import BOS_ID, EOS_ID
from kerastx.tfutil import expected_retracing

if TYPE_CHECKING:
    from kerastx.config import DecodingConfig

STRATEGIES = ("greedy", "beam", "sample")
# Per-request settings of the exported model, in signature order, with their dtypes.
REQUEST_SETTINGS = (
    ("beam_size", tf.int32),
    ("n_best", tf.int32),
    ("length_penalty", tf.float32),
    ("sampling", tf.bool),
    ("temperature", tf.float32),
    ("top_k", tf.int32),
    ("top_p", tf.float32),
    ("seed", tf.int32),
    ("max_length", tf.int32),
)


def encode_source(tokenizer, text, max_source_length: int):
    """Raw `(B,)` strings -> `(B, S)` int32 source ids: tokens cut to fit, then EOS.

    This is how the export and `predict` prepare input; the export's parity check
    compares it with the training pipeline's own encoding.
    """
    pieces = tokenizer.tokenize(text)[:, : max_source_length - 1]
    eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(text)[0], 1], EOS_ID))
    return tf.concat([tf.cast(pieces, tf.int32), eos], axis=1).to_tensor(default_value=0)


def encode_prompt(tokenizer, text, max_prompt_length: int):
    """Raw `(B,)` prompts -> `(B, P)` int32 `prompt_ids`: BOS, then at most
    `max_prompt_length` tokens (the first ones), 0-padded."""
    pieces = tokenizer.tokenize(text)[:, :max_prompt_length]
    bos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(text)[0], 1], BOS_ID))
    return tf.concat([bos, tf.cast(pieces, tf.int32)], axis=1).to_tensor(default_value=0)


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


def request_defaults(settings: dict) -> dict:
    """The per-request settings (`REQUEST_SETTINGS`) equal to a settings dict, as Python
    values: greedy is `beam_size = n_best = 1`, sampling is `sampling = True`."""
    beam = settings["strategy"] == "beam"
    return {
        "beam_size": int(settings["beam_size"]) if beam else 1,
        "n_best": int(settings["n_best"]) if beam else 1,
        "length_penalty": float(settings["length_penalty"]),
        "sampling": settings["strategy"] == "sample",
        "temperature": float(settings["temperature"]),
        "top_k": int(settings["top_k"]),
        "top_p": float(settings["top_p"]),
        "seed": int(settings["seed"]),
        "max_length": int(settings["max_length"]),
    }


def _source_bounds(source_ids, a, b, max_length):
    """Per-example output bound `a * source_length + b`, clipped to [1, max_length]."""
    src_len = tf.reduce_sum(tf.cast(tf.not_equal(source_ids, 0), tf.float32), axis=1)
    bound = tf.cast(tf.math.ceil(tf.cast(a, tf.float32) * src_len), tf.int32) + tf.cast(b, tf.int32)
    return tf.clip_by_value(bound, 1, tf.cast(max_length, tf.int32))


def drop_prefix(result: DecodeResult, prefix_lengths, static_shapes: bool) -> DecodeResult:
    """Removes the first `prefix_lengths[b]` (forced) tokens of every output of example b.

    Args:
        result: a `DecodeResult` with `ids (B, T)` or `(B, N, T)`.
        prefix_lengths: `(B,)` int32.
        static_shapes: bool. Keep `T` (True) or cut to the longest remaining output.

    Returns:
        A `DecodeResult` of the same structure; lengths reduced (at least 0), scores
        unchanged (forced tokens are not scored).
    """
    ids, lengths = result.ids, result.lengths
    shift = tf.cast(prefix_lengths, tf.int32)
    if ids.shape.rank == 3:
        shift = shift[:, None]
    width = tf.shape(ids)[-1]
    column = tf.broadcast_to(tf.range(width) + shift[..., None], tf.shape(ids))  # (B, [N,] T)
    picked = tf.gather(ids, tf.minimum(column, width - 1), batch_dims=ids.shape.rank - 1)
    ids = tf.where(column < width, picked, 0)
    lengths = tf.maximum(lengths - shift, 0)
    if not static_shapes:
        ids = ids[..., : tf.maximum(tf.reduce_max(lengths), 0)]
    return result._replace(ids=ids, lengths=lengths)


class DecodeStart(NamedTuple):
    """Where cached decoding of one batch starts (a task's `begin_decoding`).

    Attributes:
        cache: the model's key/value cache for the batch.
        start_ids: `(B,)` int32 first input tokens, or None for BOS.
        bounds: `(B,)` int32 maximum output length of each example.
        extra: dict of extra decoder arguments (`prefix_ids`, `prefix_lengths`).
    """

    cache: object
    start_ids: object
    bounds: object
    extra: dict


def begin_source_decoding(model, inputs: dict, settings: dict) -> DecodeStart:
    """An encoder-decoder's start: the encoded `source_ids`, output bounds from the
    source length (`max_length_a * S + max_length_b`, capped by `max_length`)."""
    max_length = settings["max_length"]
    source_ids = tf.cast(inputs["source_ids"], tf.int32)
    state = model.encode(source_ids, condition=inputs.get("condition"))
    bounds = _source_bounds(
        source_ids, settings["max_length_a"], settings["max_length_b"], max_length
    )
    return DecodeStart(model.init_cache(state, max_length), None, bounds, {})


def begin_prompt_decoding(model, inputs: dict, settings: dict) -> DecodeStart:
    """A decoder-only LM's start: `prompt_ids` (BOS + prompt) fed as forced tokens."""
    max_length = settings["max_length"]
    prompt = tf.cast(inputs["prompt_ids"], tf.int32)
    batch = tf.shape(prompt)[0]
    cache = model.init_cache(batch, max_length, condition=inputs.get("condition"))
    prompt_len = tf.reduce_sum(tf.cast(tf.not_equal(prompt, 0), tf.int32), axis=1)
    # The prompt's first token (BOS) is fed at index 0; the rest are forced outputs.
    extra = {"prefix_ids": prompt[:, 1:], "prefix_lengths": prompt_len - 1}
    return DecodeStart(cache, prompt[:, 0], tf.fill([batch], tf.cast(max_length, tf.int32)), extra)


def _strategy(settings: dict) -> str:
    """The decoder to run: beam search with `beam_size == n_best == 1` is greedy."""
    strategy = settings["strategy"]
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: {strategy!r}")
    if strategy == "beam" and all(
        isinstance(settings[k], int) and settings[k] == 1 for k in ("beam_size", "n_best")
    ):
        return "greedy"
    return strategy


def _search(strategy: str, next_fn, start: DecodeStart, settings: dict, common: dict):
    """Runs one decoder from `start` (see `decode_batch`)."""
    args = (next_fn, start.start_ids, start.cache, settings["max_length"])
    if strategy == "greedy":
        return greedy_search(*args, **common)
    if strategy == "beam":
        return beam_search(
            *args,
            beam_size=settings["beam_size"],
            num_return=settings["n_best"],
            length_penalty=settings["length_penalty"],
            **common,
        )
    seed = tf.stack([tf.cast(settings["seed"], tf.int32), tf.constant(0, tf.int32)])
    return sample(
        *args,
        seed=seed,
        temperature=settings["temperature"],
        top_k=settings["top_k"],
        top_p=settings["top_p"],
        **common,
    )


def decode_batch(
    model,
    task,
    inputs: dict,
    settings: dict,
    static_shapes: bool = False,
    max_lengths=None,
    early_exit: bool = False,
):
    """Decodes one batch with the model's key/value cache.

    Args:
        model: a model with `init_cache` and `decode_step` (`Seq2SeqTransformer`,
            `DecoderLM`).
        task: its generation task (`kerastx.tasks.generation.GenerationTask`): how
            decoding starts (`begin_decoding`) and what the caller gets back
            (`end_decoding`).
        inputs: dict. seq2seq: `source_ids (B, S)` and optional `condition`; decoder_lm:
            `prompt_ids (B, P)` (BOS + prompt tokens, right-padded) and optional
            `condition`.
        settings: dict from `settings_from_config` (values may be scalar tensors; the
            strategy and, with static shapes, max_length/beam_size/n_best must be
            Python). `max_length` is also the cache size.
        static_shapes: bool. Fixed shapes for XLA/TPU (`ids (..., max_length)`).
        max_lengths: `(B,)` int tensor or None. Tighter per-example bounds on the output
            (decoder_lm: on prompt + continuation).
        early_exit: bool. With static shapes, stop once every sequence has ended.

    Returns:
        A `DecodeResult`: greedy and sampling `(B, ...)`, beam search `(B, N, ...)` with
        N = n_best (beam search with `beam_size == n_best == 1` runs greedy search and
        returns `(B, ...)`). decoder_lm: the continuation only.
    """
    strategy = _strategy(settings)
    start = task.begin_decoding(model, inputs, settings)
    bounds = start.bounds
    if max_lengths is not None:
        bounds = tf.minimum(bounds, tf.cast(max_lengths, tf.int32))
    common = dict(
        max_lengths=bounds, static_shapes=static_shapes, early_exit=early_exit, **start.extra
    )
    result = _search(strategy, model.decode_step, start, settings, common)
    return task.end_decoding(result, start, static_shapes)


def decode_request(model, task, inputs: dict, request: dict, settings: dict):
    """Decodes with per-request settings given as scalar tensors (the exported model).

    Sampling if `request["sampling"]`, else greedy if `beam_size == n_best == 1`, else
    beam search: the strategy is chosen in the graph (`tf.cond`), so one trace serves
    every request. Equals `decode_batch` with the matching settings dict.

    Args:
        model, task, inputs: as in `decode_batch`.
        request: dict of scalar tensors, the keys of `REQUEST_SETTINGS`. `max_length` is
            capped by `settings["max_length"]`.
        settings: dict. The exported defaults; gives `max_length_a/b` and the cache size
            `max_length` (a Python int).

    Returns:
        A `DecodeResult` with shapes `(B, N, ...)` (N = 1 unless beam search).
    """
    key = task.decode_input_key
    per_request = ("length_penalty", "temperature", "top_k", "top_p", "seed")
    base = {**settings, **{name: request[name] for name in per_request}}
    cap = tf.minimum(tf.cast(request["max_length"], tf.int32), int(settings["max_length"]))
    limit = tf.fill([tf.shape(inputs[key])[0]], cap)

    def run(strategy, **extra):
        def branch():
            s = {**base, "strategy": strategy, **extra}
            result = decode_batch(model, task, inputs, s, max_lengths=limit)
            if result.ids.shape.rank == 2:
                result = DecodeResult(*(x[:, None] for x in result))
            return tuple(result)

        return branch

    greedy = tf.logical_and(tf.equal(request["beam_size"], 1), tf.equal(request["n_best"], 1))
    beam = run("beam", beam_size=request["beam_size"], n_best=request["n_best"])
    fields = tf.cond(
        request["sampling"], run("sample"), lambda: tf.cond(greedy, run("greedy"), beam)
    )
    return DecodeResult(*fields)


def best_ids(result) -> tf.Tensor:
    """`(B, T)` ids of the best hypothesis (the first of an n-best list)."""
    ids = result.ids
    return ids[:, 0, :] if ids.shape.rank == 3 else ids


def _bucket(size: int, smallest: int) -> int:
    """The smallest power of two >= size (and >= smallest)."""
    return max(smallest, 1 << max(size - 1, 0).bit_length())


class Decoder:
    """A reusable, traced decoder of one model and one set of settings.

    Args:
        model: the model.
        task: the model's generation task (see `decode_batch`).
        settings: dict from `settings_from_config` (Python values).
        jit_compile: bool, default False. Compile greedy and beam search with XLA:
            static shapes with an early exit (`decode_batch(static_shapes=True,
            early_exit=True)`); the batch is padded to a power of two and the ids to a
            power of two of at least 8 columns, so the number of compilations stays
            small (one per bucket pair). Results equal the dynamic decoder (same ids,
            lengths; scores up to float rounding). Sampling always runs without XLA
            (XLA draws different random numbers), so seeded samples do not depend on it.

    Call arguments (eagerly; with `jit_compile` the inputs are padded in NumPy):
        inputs: dict with the task's `decode_input_key` (`source_ids (B, S)` for
            seq2seq, `prompt_ids (B, P)` for decoder_lm), int, 0-padded; optional
            `condition`.

    Returns:
        The `DecodeResult` of `decode_batch` (dynamic shapes: `T = max(lengths)`).
    """

    def __init__(self, model, task, settings: dict, jit_compile: bool = False):
        self.model = model
        self.task = task
        self.settings = dict(settings)
        self.key = task.decode_input_key
        self.jit_compile = bool(jit_compile) and settings["strategy"] != "sample"
        spec = {self.key: tf.TensorSpec([None, None], tf.int32)}
        self._fn = expected_retracing(tf.function(self._decode, input_signature=[spec]))
        self._fn_condition = None
        self._fn_xla = expected_retracing(tf.function(self._decode_static, jit_compile=True))

    def _decode(self, inputs):
        return decode_batch(self.model, self.task, inputs, self.settings)

    def _decode_static(self, inputs, max_lengths):
        return decode_batch(
            self.model,
            self.task,
            inputs,
            self.settings,
            static_shapes=True,
            max_lengths=max_lengths,
            early_exit=True,
        )

    def __call__(self, inputs: dict):
        inputs = {k: tf.cast(v, tf.int32) if k != "condition" else v for k, v in inputs.items()}
        if self.jit_compile:
            return self._call_xla(inputs)
        if "condition" not in inputs:
            return self._fn(inputs)
        if self._fn_condition is None:
            # One graph for every batch shape: a signature from the first batch's condition
            # (tag ids (B,) or vectors (B, D)). Without it the evaluation of a multilingual
            # model retraced batch after batch (TensorFlow's retracing warning).
            condition = inputs["condition"]
            spec = {
                self.key: tf.TensorSpec([None, None], tf.int32),
                "condition": tf.TensorSpec([None, *condition.shape[1:]], condition.dtype),
            }
            self._fn_condition = tf.function(self._decode, input_signature=[spec])
        return self._fn_condition({k: inputs[k] for k in (self.key, "condition")})

    def _call_xla(self, inputs: dict):
        ids = inputs[self.key].numpy()
        batch, width = ids.shape
        rows, columns = _bucket(batch, 1) - batch, _bucket(width, 8) - width
        padded = {}
        for name, value in inputs.items():
            value = np.asarray(value)
            pad = [(0, rows)] + [(0, 0)] * (value.ndim - 1)
            if name == self.key:
                pad[1] = (0, columns)
            padded[name] = np.pad(value, pad)
        # Filler rows: a one-token input (EOS source, or BOS prompt) stopped after 1 step.
        padded[self.key][batch:, 0] = self.task.filler_id
        limits = np.where(np.arange(batch + rows) < batch, self.settings["max_length"], 1)
        result = self._fn_xla(
            {k: tf.constant(v) for k, v in padded.items()}, tf.constant(limits, tf.int32)
        )
        result = DecodeResult(*(x[:batch] for x in result))
        width = int(np.max(result.lengths.numpy(), initial=0))
        return result._replace(ids=result.ids[..., :width])
