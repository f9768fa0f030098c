"""Evaluation: dev/test loss and the task's metrics from decoding.

`evaluate_model` is shared by evaluation during training (greedy decoding of the dev set,
TensorBoard samples and attention maps) and `kerastx evaluate RUN_DIR` (the run's decoding
settings on the test split, results written to `RUN_DIR/eval_<split>.json`).

Attention maps (`evaluation.attention_images`, seq2seq models): for the first N dev
examples in file order, a teacher-forced pass (reference target, `training=False`)
records the cross-attention probabilities of the last decoder layer; they are averaged
over heads and cropped to the real tokens, giving one grey image per example with one
row per target position (BOS + reference) and one column per source token (+ EOS);
brightness = probability (each row sums to 1). Each cell is drawn as a square of
pixels so short sequences stay visible.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf

from kerastx import inference, metrics
from kerastx.tfutil import expected_retracing
from kerastx.train.losses import (
    label_pad_id,
    smoothed_cross_entropy_sum,
    token_accuracy_counts,
)
from kerastx.train.step import model_inputs


class EvaluationInterrupted(Exception):
    """`should_stop()` became true during an evaluation (the trainer got SIGTERM)."""


def _check(should_stop) -> None:
    if should_stop is not None and should_stop():
        raise EvaluationInterrupted("evaluation interrupted")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _LossFn:
    def __init__(self, model, model_type):
        self.model = model
        self.model_type = model_type
        self.fn = expected_retracing(tf.function(self._sums, reduce_retracing=True))

    def _sums(self, batch):
        inputs, labels = model_inputs(batch, self.model_type)
        logits = self.model(inputs, training=False)
        pad_id = label_pad_id(self.model_type)
        _, nll, count = smoothed_cross_entropy_sum(labels, logits, 0.0, pad_id)
        correct = token_accuracy_counts(labels, logits, pad_id)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return nll, count, correct, predicted


def evaluate_model(
    model,
    data,
    cfg,
    split: str,
    settings: dict,
    max_examples: int = 0,
    num_samples: int = 0,
    should_stop=None,
) -> dict:
    """Loss, perplexity, token accuracy and task metrics of a model on one split.

    Args:
        model: the model (weights loaded).
        data: the run's DataModule.
        cfg: the resolved experiment.
        split: str. "dev" or "test".
        settings: dict. Decoding settings (see `inference.settings_from_config`).
        max_examples: int. Distinct sources decoded for task metrics; 0 = all.
        num_samples: int. Examples returned as (source, references, hypothesis).
        should_stop: callable returning bool, or None. Checked between batches.

    Returns:
        dict of float metrics, plus "samples" (list of dicts) and "decoded" (count).

    Raises:
        EvaluationInterrupted: `should_stop()` returned True.
    """
    model_type = cfg.model.type
    batch_size = cfg.decoding.batch_size
    loss_fn = _LossFn(model, model_type)
    nll_sum = tokens = correct = 0.0
    for batch in data.eval_dataset(split, batch_size):
        _check(should_stop)
        nll, count, right, _ = loss_fn.fn(
            {k: v for k, v in batch.items() if k not in ("source_text", "target_text")}
        )
        nll_sum += float(nll)
        tokens += float(count)
        correct += float(right)
    out: dict = {}
    if tokens:
        out["loss"] = nll_sum / tokens
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
        out["token_accuracy"] = correct / tokens
    names = cfg.evaluation.metrics or metrics.default_metrics(
        model_type, getattr(getattr(cfg.data, split), "type", None)
    )
    if model_type == "encoder_classifier":
        out["accuracy"] = 100.0 * out.get("token_accuracy", 0.0)
        return out
    if model_type != "seq2seq" or not names:
        return out
    _check(should_stop)
    hyps, sources = decode_split(model, data, cfg, split, settings, max_examples, should_stop)
    refs_by_source = data.references(split)
    refs = [refs_by_source[s] for s in sources]
    out.update(metrics.task_metrics(names, hyps, refs))
    out["decoded"] = len(hyps)
    out["samples"] = [
        {"source": s, "references": r, "hypothesis": h}
        for s, r, h in list(zip(sources, refs, hyps))[:num_samples]
    ]
    return out


def decode_split(
    model, data, cfg, split: str, settings: dict, max_examples: int = 0, should_stop=None
):
    """Decodes each distinct source of a split once, in file order.

    Returns:
        `(hypotheses, sources)`: lists of str.

    Raises:
        EvaluationInterrupted: `should_stop()` returned True (checked between batches).
    """
    decoder = inference.Decoder(
        model, cfg.model.type, settings, jit_compile=cfg.decoding.jit_compile
    )
    seen: set = set()
    hyps, sources = [], []
    for batch in data.eval_dataset(split, cfg.decoding.batch_size):
        _check(should_stop)
        texts = [_text(t) for t in batch["source_text"].numpy()]
        keep = []
        for i, text in enumerate(texts):
            if text not in seen and (not max_examples or len(seen) < max_examples):
                seen.add(text)
                keep.append(i)
        if keep:
            source_ids = tf.gather(batch["source_ids"], keep)
            inputs = {"source_ids": _trim_columns(source_ids)}
            if "condition" in batch:
                inputs["condition"] = tf.gather(batch["condition"], keep)
            result = decoder(inputs)
            decoded = data.target_tokenizer.detokenize(inference.best_ids(result))
            hyps.extend(_text(t) for t in decoded.numpy())
            sources.extend(texts[i] for i in keep)
        if max_examples and len(seen) >= max_examples:
            break
    return hyps, sources


def _trim_columns(ids: tf.Tensor) -> tf.Tensor:
    """Drops all-padding columns at the end (after selecting a subset of rows)."""
    width = int(np.max(np.sum(ids.numpy() != 0, axis=1), initial=1))
    return ids[:, : max(width, 1)]


def cross_attention(model, inputs: dict) -> np.ndarray:
    """Cross-attention probabilities of the last decoder layer in a teacher-forced pass.

    The probabilities are read as the layer computes them (its `_compute_attention` is
    wrapped for one forward pass with `training=False`), so no layer code changes.

    Args:
        model: a `Seq2SeqTransformer`.
        inputs: dict with `source_ids (B, S)`, `target_in_ids (B, T)` [, `condition`].

    Returns:
        float32 array `(B, N, T, S)`: per head, each target position's distribution
        over source positions (zero on padded sources).
    """
    attention = model.decoder_layers[-1]._cross_attention
    original = attention._compute_attention
    captured = []

    def capture(*args, **kwargs):
        outputs, probabilities = original(*args, **kwargs)
        captured.append(probabilities)
        return outputs, probabilities

    attention._compute_attention = capture
    try:
        model(inputs, training=False)
    finally:
        del attention._compute_attention
    return np.asarray(tf.cast(captured[-1], tf.float32))


def attention_maps(model, data, cfg, split: str, count: int) -> list[dict]:
    """Head-averaged cross-attention maps of the first `count` examples of a split.

    Returns:
        list of dicts: "image" float32 `(T_real, S_real)` in [0, 1] (rows: BOS + target
        tokens, columns: source tokens + EOS), "source", "target" (str).
    """
    if cfg.model.type != "seq2seq" or count <= 0:
        return []
    maps: list = []
    for batch in data.eval_dataset(split, cfg.decoding.batch_size):
        take = min(count - len(maps), int(batch["source_ids"].shape[0]))
        inputs, _ = model_inputs({k: v[:take] for k, v in batch.items()}, "seq2seq")
        probabilities = cross_attention(model, inputs).mean(axis=1)  # (B, T, S)
        source_ids = np.asarray(inputs["source_ids"])
        target_ids = np.asarray(inputs["target_in_ids"])
        for i in range(take):
            rows, cols = int(np.sum(target_ids[i] != 0)), int(np.sum(source_ids[i] != 0))
            maps.append(
                {
                    "image": probabilities[i, :rows, :cols],
                    "source": _text(batch["source_text"][i].numpy()),
                    "target": _text(batch["target_text"][i].numpy())
                    if "target_text" in batch
                    else "",
                }
            )
        if len(maps) >= count:
            break
    return maps


def _enlarge(image: np.ndarray, pixels: int = 128) -> np.ndarray:
    """Repeats each cell so the longer side is about `pixels` pixels."""
    cell = max(1, pixels // max(image.shape))
    return np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)


def evaluate_during_training(trainer, board, should_stop=None) -> dict:
    """Dev-set evaluation at the current step; writes TensorBoard scalars and samples.

    Writes `eval/<metric>` scalars, the `eval/samples` text table (source, references,
    hypothesis of `evaluation.num_samples` examples) and `eval/attention/<i>` images
    (`evaluation.attention_images` examples; see the module docstring).

    Args:
        trainer: the `Trainer` (model, data, config, step).
        board: its `summaries.Board`.
        should_stop: callable or None; see `evaluate_model`.

    Returns:
        dict of the float metrics (empty without a dev set).

    Raises:
        EvaluationInterrupted: `should_stop()` returned True; nothing was written.
    """
    cfg = trainer.cfg
    if cfg.data.dev is None:
        return {}
    settings = inference.settings_from_config(cfg.decoding, strategy="greedy")
    results = evaluate_model(
        trainer.model,
        trainer.data,
        cfg,
        "dev",
        settings,
        max_examples=cfg.evaluation.max_examples,
        num_samples=cfg.evaluation.num_samples,
        should_stop=should_stop,
    )
    _check(should_stop)
    maps = attention_maps(trainer.model, trainer.data, cfg, "dev", cfg.evaluation.attention_images)
    step = trainer.step
    # Metrics are floats; the int counts behind them (decoded, correct, words) are not.
    board.scalars(step, {k: v for k, v in results.items() if isinstance(v, float)}, "eval")
    samples = results.pop("samples", [])
    if samples:
        rows = ["| source | reference(s) | hypothesis |", "|---|---|---|"]
        rows += [
            f"| {s['source']} | {' / '.join(s['references'])} | {s['hypothesis']} |"
            for s in samples
        ]
        board.text(step, "eval/samples", "\n".join(rows))
    for i, item in enumerate(maps):
        board.image(
            step,
            f"eval/attention/{i}",
            _enlarge(np.clip(item["image"], 0.0, 1.0)),
            description=f"source: {item['source']}  \ntarget: {item['target']}  \n"
            "rows: BOS + target tokens; columns: source tokens + EOS; last decoder "
            "layer, mean over heads",
        )
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def run(run_dir: str, split: str = "test", overrides: list[str] | None = None) -> int:
    """`kerastx evaluate RUN_DIR`: metrics on a split, printed and written as JSON."""
    from kerastx.runs import load_run

    loaded = load_run(run_dir, overrides)
    cfg = loaded.cfg
    settings = inference.settings_from_config(cfg.decoding)
    if getattr(cfg.data, split) is None:
        from kerastx.errors import KerastxError

        raise KerastxError(f"{run_dir}: the experiment has no data.{split} corpus")
    results = evaluate_model(
        loaded.model, loaded.data, cfg, split, settings, num_samples=cfg.evaluation.num_samples
    )
    results["checkpoint"] = loaded.checkpoint
    results["split"] = split
    results["decoding"] = settings
    path = os.path.join(run_dir, f"eval_{split}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    shown = {k: round(v, 3) for k, v in results.items() if isinstance(v, float)}
    print(f"{split}: {shown}")
    for sample in results.get("samples", []):
        print(
            f"  {sample['source']} -> {sample['hypothesis']}   "
            f"(reference: {' / '.join(sample['references'])})"
        )
    print(f"wrote {path}")
    return 0
