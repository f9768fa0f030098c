"""Evaluation: dev/test loss and the task's metrics from decoding.

`evaluate_model` is shared by evaluation during training (greedy decoding of the dev set,
TensorBoard samples) and `kerastx evaluate RUN_DIR` (the run's decoding settings on the
test split, results written to `RUN_DIR/eval_<split>.json`).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf

from kerastx import inference, metrics
from kerastx.train.losses import smoothed_cross_entropy_sum, token_accuracy_counts
from kerastx.train.step import model_inputs


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _LossFn:
    def __init__(self, model, model_type):
        self.model = model
        self.model_type = model_type
        self.fn = tf.function(self._sums, reduce_retracing=True)

    def _sums(self, batch):
        inputs, labels = model_inputs(batch, self.model_type)
        logits = self.model(inputs, training=False)
        pad_id = None if self.model_type == "encoder_classifier" else 0
        _, nll, count = smoothed_cross_entropy_sum(labels, logits, 0.0, pad_id)
        correct = token_accuracy_counts(labels, logits, pad_id)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return nll, count, correct, predicted


def evaluate_model(
    model, data, cfg, split: str, settings: dict, max_examples: int = 0, num_samples: int = 0
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

    Returns:
        dict of float metrics, plus "samples" (list of dicts) and "decoded" (count).
    """
    model_type = cfg.model.type
    batch_size = cfg.decoding.batch_size
    loss_fn = _LossFn(model, model_type)
    nll_sum = tokens = correct = 0.0
    for batch in data.eval_dataset(split, batch_size):
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
    hyps, sources = decode_split(model, data, cfg, split, settings, max_examples)
    refs_by_source = data.references(split)
    refs = [refs_by_source[s] for s in sources]
    out.update(metrics.task_metrics(names, hyps, refs))
    out["decoded"] = len(hyps)
    out["samples"] = [
        {"source": s, "references": r, "hypothesis": h}
        for s, r, h in list(zip(sources, refs, hyps))[:num_samples]
    ]
    return out


def decode_split(model, data, cfg, split: str, settings: dict, max_examples: int = 0):
    """Decodes each distinct source of a split once, in file order.

    Returns:
        `(hypotheses, sources)`: lists of str.
    """
    decoder = inference.Decoder(model, cfg.model.type, settings)
    seen: set = set()
    hyps, sources = [], []
    for batch in data.eval_dataset(split, cfg.decoding.batch_size):
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


def evaluate_during_training(trainer, board) -> dict:
    """Dev-set evaluation at the current step; writes TensorBoard scalars and samples."""
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
    )
    step = trainer.step
    board.scalars(
        step,
        {k: v for k, v in results.items() if isinstance(v, (int, float)) and k not in ("decoded",)},
        "eval",
    )
    samples = results.pop("samples", [])
    if samples:
        rows = ["| source | reference(s) | hypothesis |", "|---|---|---|"]
        rows += [
            f"| {s['source']} | {' / '.join(s['references'])} | {s['hypothesis']} |"
            for s in samples
        ]
        board.text(step, "eval/samples", "\n".join(rows))
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
