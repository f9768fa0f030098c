"""Evaluation: dev/test loss and the task's metrics from decoding.

`evaluate_model` is shared by evaluation during training (greedy decoding of the dev set,
TensorBoard samples and attention maps) and `kerastx evaluate RUN_DIR` (`workflow.evaluate`:
the run's decoding settings on the test split, results written to
`RUN_DIR/eval_<split>.json`). What is decoded and which metrics follow is the task's
(`kerastx.tasks`): this module holds the shared loop.

Attention maps (`evaluation.attention_images`, seq2seq models): for the first N dev
examples in file order, a teacher-forced pass (reference target, `training=False`)
records the cross-attention probabilities of the last decoder layer, per head, cropped
to the real tokens: one row per target position (fed BOS + reference; labelled with
the token written there, reference + EOS), one column per source token (+ EOS); each
row sums to 1. `train.summaries.Board.attention` draws them (`kerastx.plots`): the mean
over heads and one panel per head, with the token strings (`token_strings`) as labels.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re

import numpy as np
import tensorflow as tf

from kerastx import inference, metrics
from kerastx.data import conditions
from kerastx.data import vocab as vocab_lib
from kerastx.losses import smoothed_cross_entropy_sum, token_accuracy_counts
from kerastx.special_ids import EOS_ID, SPECIAL_TOKENS, UNK_ID
from kerastx.tfutil import expected_retracing


class EvaluationInterrupted(Exception):
    """`should_stop()` became true during an evaluation (the trainer got SIGTERM)."""


def _check(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise EvaluationInterrupted("evaluation interrupted")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _LossFn:
    def __init__(self, model, task):
        self.model = model
        self.task = task
        self.fn = expected_retracing(tf.function(self._sums, reduce_retracing=True))

    def _sums(self, batch):
        inputs, labels = self.task.model_inputs(batch)
        logits = self.model(inputs, training=False)
        pad_id = self.task.label_pad_id
        _, nll, count = smoothed_cross_entropy_sum(labels, logits, 0.0, pad_id)
        correct = token_accuracy_counts(labels, logits, pad_id)
        unknown = tf.reduce_sum(tf.cast(tf.equal(labels, UNK_ID), tf.float32))
        return nll, count, correct, unknown


def loss_metrics(task, model, data, split: str, should_stop=None) -> dict:
    """Loss (nats per label), perplexity and token accuracy of a split (a teacher-forced
    pass over every example); empty if the split has no labels. With `bits_per_byte`
    among the task's metrics, also that (see `bits_per_byte`)."""
    loss_fn = _LossFn(model, task)
    nll_sum = tokens = correct = unknown = 0.0
    text_key = None
    if "bits_per_byte" in task.metric_names(task.cfg):
        text_key = task.layout[task.label_key][0] + "_text"  # the text the labels spell
    texts: list[bytes] = []
    for batch in data.eval_dataset(split, task.cfg.decoding.batch_size):
        _check(should_stop)
        nll, count, right, unk = loss_fn.fn(
            {k: v for k, v in batch.items() if k not in ("source_text", "target_text")}
        )
        nll_sum += float(nll)
        tokens += float(count)
        correct += float(right)
        unknown += float(unk)
        if text_key is not None:
            texts.extend(batch[text_key].numpy().tolist())
    if not tokens:
        return {}
    loss = nll_sum / tokens
    out = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / tokens,
    }
    if text_key is not None:
        truncated = int(data.split_counts(split).get("truncated", 0))
        out.update(bits_per_byte(nll_sum, b"".join(texts), int(unknown), truncated, split))
    return out


def bits_per_byte(nll_nats: float, text: bytes, unk_tokens: int, truncated: int, split: str):
    """A language model's bits per byte of a split, next to its compressor anchors.

    `bits_per_byte = nll_nats / ln 2 / len(text)`: the negative log-likelihood of every
    label the loss pass scored - each text token and the EOS that ends each example -
    over the UTF-8 bytes of the texts (the EOS tokens have no byte: counting their cost
    makes the figure, if anything, higher). `unk_tokens` says how many labels were UNK
    (a byte tokenizer has none; an UNK stands for text the model never had to spell, so
    a figure with many is too low). The anchors (`metrics.compression_bits_per_byte`:
    `xz -9`, `gzip -9`) compress the same texts concatenated in file order (a stdlib
    chunk holds its newlines: the concatenation is the held-out files, byte for byte).
    A split with truncated examples has no figure (the loss pass did not score all of
    the text; a warning says so).
    """
    if truncated or not text:
        if truncated:
            logging.getLogger("kerastx").warning(
                "%s: no bits_per_byte: %d examples are longer than data.max_source_length "
                "and were cut for the model",
                split,
                truncated,
            )
        return {"unk_tokens": unk_tokens}
    return {
        "bits_per_byte": nll_nats / math.log(2.0) / len(text),
        "unk_tokens": unk_tokens,
        **_anchors(text),
    }


@functools.lru_cache(maxsize=4)
def _anchors(text: bytes) -> dict:
    """`metrics.compression_bits_per_byte`, once per text (the dev set at each evaluation)."""
    return metrics.compression_bits_per_byte(text)


def completions(task, model, data, prompts: list[str]) -> list[dict]:
    """`evaluation.prompts` decoded with the run's `decoding:` settings (an LM: top-p
    samples of their continuations when `decoding.strategy: sample`).

    Returns:
        list of dicts: "prompt", "completion" (the best output, without the prompt).
    """
    cfg = task.cfg
    settings = inference.settings_from_config(cfg.decoding)
    decoded = task.predict(model, data, list(prompts), settings, cfg.decoding.batch_size, jit=False)
    return [{"prompt": p, "completion": out[0]} for p, out in zip(prompts, decoded.outputs)]


def evaluate_model(
    task,
    model,
    data,
    split: str,
    settings: dict,
    max_examples: int = 0,
    num_samples: int = 0,
    should_stop=None,
) -> dict:
    """Loss, perplexity, token accuracy and task metrics of a model on one split.

    Args:
        task: the experiment's task (`task.cfg` is the resolved experiment).
        model: the model (weights loaded).
        data: the run's DataModule.
        split: str. "dev" or "test".
        settings: dict. Decoding settings (see `inference.settings_from_config`).
        max_examples: int. Distinct sources decoded for task metrics; 0 = all.
        num_samples: int. Examples returned as (source, references, hypothesis).
        should_stop: callable returning bool, or None. Checked between batches.

    Returns:
        dict of float metrics, plus "samples" (list of dicts), "decoded" (count), with
        `evaluation.prompts` "completions" (see `completions`) and, for a conditioned
        model, "by_condition" (see `metrics_by_condition`).

    Raises:
        EvaluationInterrupted: `should_stop()` returned True.
    """
    out = loss_metrics(task, model, data, split, should_stop)
    out.update(task.metrics_from_losses(out))
    cfg = task.cfg
    if cfg.evaluation.prompts:
        _check(should_stop)
        out["completions"] = completions(task, model, data, cfg.evaluation.prompts)
    names = cfg.evaluation.metrics or task.default_metrics(
        getattr(getattr(cfg.data, split), "type", None)
    )
    decode = task.text_decoder(model, data, settings) if names else None
    if decode is None:
        return out
    _check(should_stop)
    hyps, sources = decode_split(task, data, split, decode, max_examples, should_stop)
    refs_by_source = data.references(split)
    refs = [refs_by_source[s] for s in sources]
    out.update(metrics.task_metrics(names, hyps, refs))
    out["decoded"] = len(hyps)
    if cfg.model.num_conditions or cfg.model.condition_dim:
        out["by_condition"] = metrics_by_condition(names, hyps, refs, sources)
    out["samples"] = [
        {"source": s, "references": r, "hypothesis": h}
        for s, r, h in list(zip(sources, refs, hyps))[:num_samples]
    ]
    return out


def metrics_by_condition(names, hyps: list, refs: list, sources: list) -> dict:
    """The task metrics of each condition's share of a decoded split: what a multilingual
    model is judged by (BLEU into French, into Spanish, ...), not only the pooled figure.

    Args:
        names: the metric names.
        hyps, refs: the hypotheses and their references, in `decode_split` order.
        sources: the input lines `CONDITION<TAB>source` (`decode_split`).

    Returns:
        dict: condition text -> {metric: value, "decoded": count}, sorted by condition.
    """
    groups: dict = {}
    for hyp, ref, line in zip(hyps, refs, sources):
        condition, _ = conditions.split_line(line)
        group = groups.setdefault(condition, ([], []))
        group[0].append(hyp)
        group[1].append(ref)
    return {
        c: {**metrics.task_metrics(names, h, r), "decoded": len(h)}
        for c, (h, r) in sorted(groups.items())
    }


def decode_split(task, data, split: str, decode, max_examples: int = 0, should_stop=None):
    """Decodes each distinct source of a split once, in file order.

    With a condition an input is the line `CONDITION<TAB>source` (`DataModule.input_lines`,
    the key of `DataModule.references`): the same source under two conditions is decoded
    under each.

    Args:
        task: the task (its decoding batch size).
        data: the DataModule.
        split: str. "dev" or "test".
        decode: the task's `text_decoder`: `fn(batch rows) -> list of str`.
        max_examples: int. Distinct sources decoded; 0 = all.
        should_stop: callable or None; checked between batches.

    Returns:
        `(hypotheses, sources)`: lists of str (with a condition, the input lines).

    Raises:
        EvaluationInterrupted: `should_stop()` returned True (checked between batches).
    """
    seen: set = set()
    hyps, sources = [], []
    for batch in data.eval_dataset(split, task.cfg.decoding.batch_size):
        _check(should_stop)
        texts = [_text(t) for t in batch["source_text"].numpy()]
        if "condition" in batch:
            texts = data.input_lines(batch["condition"].numpy(), texts)
        keep = []
        for i, text in enumerate(texts):
            if text not in seen and (not max_examples or len(seen) < max_examples):
                seen.add(text)
                keep.append(i)
        if keep:
            rows = {
                k: tf.gather(v, keep)
                for k, v in batch.items()
                if k not in ("source_text", "target_text")
            }
            hyps.extend(decode(rows))
            sources.extend(texts[i] for i in keep)
        if max_examples and len(seen) >= max_examples:
            break
    return hyps, sources


def source_decoder(task, model, data, settings: dict):
    """An encoder-decoder's text decoder for `decode_split`: the cached decoder on the
    rows' `source_ids` (and condition), detokenized with the target tokenizer."""
    decoder = inference.Decoder(model, task, settings, jit_compile=task.cfg.decoding.jit_compile)

    def decode(rows: dict) -> list[str]:
        inputs = {"source_ids": _trim_columns(rows["source_ids"])}
        if "condition" in rows:
            inputs["condition"] = rows["condition"]
        result = decoder(inputs)
        decoded = data.target_tokenizer.detokenize(inference.best_ids(result))
        return [_text(t) for t in decoded.numpy()]

    return decode


def _trim_columns(ids: tf.Tensor) -> tf.Tensor:
    """Drops all-padding columns at the end (after selecting a subset of rows)."""
    width = int(np.max(np.sum(ids.numpy() != 0, axis=1), initial=1))
    return ids[:, : max(width, 1)]


def cross_attention(model, inputs: dict) -> np.ndarray:
    """Cross-attention probabilities of the last decoder layer in a teacher-forced pass.

    Args:
        model: a `Seq2SeqTransformer`.
        inputs: dict with `source_ids (B, S)`, `target_in_ids (B, T)` [, `condition`].

    Returns:
        float32 array `(B, N, T, S)`: per head, each target position's distribution
        over source positions (zero on padded sources); the model's
        `cross_attention_weights`.
    """
    return np.asarray(model.cross_attention_weights(inputs))


def attention_maps(task, model, data, split: str, count: int) -> list[dict]:
    """Head-averaged cross-attention maps of the first `count` examples of a split
    (an encoder-decoder's `Task.attention_maps`).

    Returns:
        list of dicts: "image" float32 `(T_real, S_real)` in [0, 1], the mean over heads
        (rows: BOS + target tokens fed, columns: source tokens + EOS), "heads" float32
        `(N, T_real, S_real)`, "source_tokens" (`S_real` str), "output_tokens"
        (`T_real` str: the target tokens + EOS, the token written at each row), "layer"
        and "num_layers" (the last layer, counted from 1), "source", "target" (str).
    """
    if count <= 0:
        return []
    maps: list = []
    for batch in data.eval_dataset(split, task.cfg.decoding.batch_size):
        take = min(count - len(maps), int(batch["source_ids"].shape[0]))
        inputs, _ = task.model_inputs({k: v[:take] for k, v in batch.items()})
        heads = cross_attention(model, inputs)  # (B, N, T, S)
        probabilities = heads.mean(axis=1)  # (B, T, S)
        source_ids = np.asarray(inputs["source_ids"])
        target_ids = np.asarray(inputs["target_in_ids"])
        for i in range(take):
            rows, cols = int(np.sum(target_ids[i] != 0)), int(np.sum(source_ids[i] != 0))
            written = [*target_ids[i, 1:rows], EOS_ID]  # the token written at each row
            maps.append(
                {
                    "image": probabilities[i, :rows, :cols],
                    "heads": heads[i, :, :rows, :cols],
                    "source_tokens": token_strings(data.source_tokenizer, source_ids[i, :cols]),
                    "output_tokens": token_strings(data.target_tokenizer, written),
                    "layer": model.num_decoder_layers,
                    "num_layers": model.num_decoder_layers,
                    "source": _text(batch["source_text"][i].numpy()),
                    "target": _text(batch["target_text"][i].numpy())
                    if "target_text" in batch
                    else "",
                }
            )
        if len(maps) >= count:
            break
    return maps


def token_strings(tokenizer, ids) -> list[str]:
    """The token string of each id (tick labels of attention maps).

    Special ids as their vocabulary lines (`<s>`, `</s>`, ...); vocabulary-file
    tokenizers (chars, words, symbols, wordpiece: `##` pieces kept) by line; SentencePiece
    by piece (`▁` kept); any other tokenizer by detokenizing the id alone.
    """
    kind, path = getattr(tokenizer, "kind", None), getattr(tokenizer, "path", None)
    table = _token_table(kind, path, os.path.getmtime(path) if path else None)
    out = []
    for i in (int(v) for v in ids):
        if i < len(SPECIAL_TOKENS):
            out.append(SPECIAL_TOKENS[i])
        elif table is not None and i < len(table):
            out.append(table[i])
        else:
            out.append(_text(tokenizer.detokenize(tf.constant([[i]], tf.int32)).numpy()[0]))
    return out


@functools.lru_cache(maxsize=8)
def _token_table(kind: str | None, path: str | None, mtime: float | None) -> list[str] | None:
    """The token of each id of a vocabulary file or SentencePiece model (cached by path
    and modification time), or None for other tokenizers."""
    del mtime  # part of the cache key only
    if not path:
        return None
    if kind in ("chars", "words", "symbols", "wordpiece", "bytes"):
        return vocab_lib.read_entries(path)
    if kind == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    return None


def evaluate_during_training(trainer, board, should_stop=None) -> dict:
    """Dev-set evaluation at the current step; writes TensorBoard scalars and samples.

    Writes `eval/<metric>` scalars (a conditioned model's also per condition, as
    `eval/by_condition/<condition>/<metric>`), the `eval/samples` text table (source, references,
    hypothesis of `evaluation.num_samples` examples) and the `eval/attention/<i>` and
    `eval/attention_heads/<i>` images (`evaluation.attention_images` examples; see the
    module docstring).

    Args:
        trainer: the `Trainer` (model, data, config, step).
        board: its `summaries.Board`.
        should_stop: callable or None; see `evaluate_model`.

    Returns:
        dict of the float metrics (empty without a dev set).

    Raises:
        EvaluationInterrupted: `should_stop()` returned True; nothing was written.
    """
    cfg, task = trainer.cfg, trainer.task
    if cfg.data.dev is None:
        return {}
    settings = inference.settings_from_config(cfg.decoding, strategy="greedy")
    results = evaluate_model(
        task,
        trainer.model,
        trainer.data,
        "dev",
        settings,
        max_examples=cfg.evaluation.max_examples,
        num_samples=cfg.evaluation.num_samples,
        should_stop=should_stop,
    )
    _check(should_stop)
    maps = task.attention_maps(trainer.model, trainer.data, "dev", cfg.evaluation.attention_images)
    step = trainer.step
    # Metrics are floats; the int counts behind them (decoded, correct, words) are not.
    board.scalars(step, {k: v for k, v in results.items() if isinstance(v, float)}, "eval")
    for condition, group in results.pop("by_condition", {}).items():
        # `eval/by_condition/fr/bleu`; a vector condition's text made a legal tag name.
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", condition)
        floats = {k: v for k, v in group.items() if isinstance(v, float)}
        board.scalars(step, floats, f"eval/by_condition/{name}")
    completed = results.pop("completions", [])
    if completed:
        board.completions(step, completed)
    samples = results.pop("samples", [])
    if samples:
        rows = ["| source | reference(s) | hypothesis |", "|---|---|---|"]
        rows += [
            f"| {s['source']} | {' / '.join(s['references'])} | {s['hypothesis']} |"
            for s in samples
        ]
        board.text(step, "eval/samples", "\n".join(rows))
    for i, item in enumerate(maps):
        board.attention(step, i, item)
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}
