"""`kerastx data-stats` and the pipeline benchmark.

`data_stats(cfg)`: counts, length histograms, OOV rates, dropped/truncated counts, and
what the batching gives on epoch 0 for one replica (per-replica batch = the global
`batch_size` when there is one replica): padding fraction and distinct batch shapes with
the configured buckets, with no bucketing (`bucket_width: 0`, everything padded to the
longest allowed length) and, for reference, with batches padded to their own longest
example but not bucketed.

Padding fraction = padding slots / all slots of the model inputs, counting the source
and the target tensors of seq2seq (`source_ids`, `target_in_ids`), the single input of
LMs and classifiers.

`measure_pipeline(cfg, seconds)` runs the real training pipeline (one replica) and
reports examples/s and tokens/s next to the same padding figures.
"""

from __future__ import annotations

import time

import numpy as np

from kerastx.data import batching
from kerastx.data.module import build_data


def _sides(module, corpora) -> list[np.ndarray]:
    src = np.concatenate([c.model_lengths()[0] for c in corpora])
    if "target" in module.task.fields:
        return [src, np.concatenate([c.model_lengths()[1] for c in corpora])]
    return [src]


def batch_figures(planner, sides: list[np.ndarray], epoch: int = 0) -> dict:
    """Padding fraction, shapes and tokens per batch of one epoch of a planner."""
    rows, sizes, lengths = planner.batches(epoch)
    real = sum(int(s[rows].sum()) for s in sides)
    slots = int((sizes * lengths).sum()) * len(sides)
    shapes = sorted({(int(b), int(length)) for b, length in zip(sizes, lengths)})
    return {
        "examples": int(len(rows)),
        "batches": int(len(sizes)),
        "padding_fraction": round(1 - real / slots, 4) if slots else 0.0,
        "distinct_shapes": len(shapes),
        "shapes": shapes,
        "max_batch_tokens": int((sizes * lengths).max()) if len(sizes) else 0,
    }


def _batch_max_padding(planner, sides: list[np.ndarray], budget: int, unit: str) -> float:
    """Padding with batches cut in shuffled order, each padded to its longest example."""
    order = planner.order(0)
    longest = planner.lengths[order]
    real = sum(int(s[order].sum()) for s in sides)
    slots, count, top = 0, 0, 0
    for length in longest:
        new_top = max(top, int(length))
        fits = (count + 1) * new_top <= budget if unit == "tokens" else count < budget
        if count and not fits:
            slots += count * top
            count, new_top = 0, int(length)
        count, top = count + 1, new_top
    slots += count * top
    slots *= len(sides)
    return round(1 - real / slots, 4) if slots else 0.0


def _histogram(lengths: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(lengths, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _oov(counts: dict, side: str) -> float | None:
    tokens = counts.get(f"{side}_tokens")
    if not tokens:
        return None
    return round(counts[f"{side}_unk"] / tokens, 6)


def data_stats(cfg) -> dict:
    """Statistics of an experiment's data (see the module docstring).

    Every corpus is read before a vocabulary is built into the run directory, so a bad
    data file leaves nothing behind (`run_data_stats` also removes what it created when
    a later step fails).
    """
    module = build_data(cfg, read_first=True)
    report = module.report()
    corpora = module.train_corpora()
    d = cfg.data
    sides = _sides(module, corpora)
    names = ["source", "target"][: len(sides)]
    planner = module.planner(1)
    flat = module.planner(1, boundaries=batching.bucket_boundaries(module.max_length, 0, 1.0))
    budget = batching.per_replica_budget(d.batch_size, d.batch_unit, d.batch_scope, 1)
    out = {
        "name": cfg.name,
        "model_type": module.model_type,
        "vocabulary": {"source": module.source_tokenizer.vocab_size},
        "counts": report,
        "lengths": {
            name: {
                "histogram": _histogram(side - 1),
                "mean": round(float(side.mean() - 1), 3),
                "max": int(side.max() - 1),
            }
            for name, side in zip(names, sides)
        },
        "oov_rate": {
            split: {name: _oov(counts, name) for name in names} for split, counts in report.items()
        },
        "batching": {
            "batch_size": budget,
            "batch_unit": d.batch_unit,
            "boundaries": [int(b) for b in module.boundaries],
            "bucketed": batch_figures(planner, sides),
            "no_bucketing": batch_figures(flat, sides),
            "batch_max_padding_fraction": _batch_max_padding(planner, sides, budget, d.batch_unit),
        },
    }
    if module.task.target_vocabulary == "own":
        out["vocabulary"]["target"] = module.target_tokenizer.vocab_size
    if module.labels is not None:
        out["vocabulary"]["labels"] = len(module.labels)
    if module.conditions is not None:
        out["vocabulary"]["conditions"] = len(module.conditions)
    return out


def format_stats(stats: dict) -> str:
    """`data_stats` as text for the terminal."""
    lines = [f"data of {stats['name']} ({stats['model_type']})"]
    vocab = ", ".join(f"{k} {v}" for k, v in stats["vocabulary"].items())
    lines.append(f"vocabulary sizes: {vocab}")
    for split, counts in stats["counts"].items():
        if counts.get("sample_of_streamed"):
            lines.append(
                f"train is streamed from {counts['sample_of_streamed']}; the figures below "
                f"are its vocabulary sample's (data.vocab_sample)"
            )
        lines.append(
            f"{split}: {counts['examples']} examples, {counts['kept']} kept, "
            f"{counts['dropped']} dropped, {counts['truncated']} truncated, "
            f"{counts['empty']} empty dropped, {counts['replaced']} lines with replaced UTF-8"
        )
        if len(counts["corpora"]) > 1:
            for c in counts["corpora"]:
                lines.append(
                    f"  {c['name']}: {c['examples']} examples, {c['dropped']} "
                    f"dropped, {c['truncated']} truncated, {c['empty']} empty dropped"
                )
        oov = stats["oov_rate"][split]
        rates = [f"{side} {rate:.4%}" for side, rate in oov.items() if rate is not None]
        lines.append("  OOV rate: " + (", ".join(rates) or "no tokens"))
    for side, info in stats["lengths"].items():
        hist = " ".join(f"{k}:{v}" for k, v in info["histogram"].items())
        lines.append(f"{side} length (tokens, train): mean {info['mean']}, max {info['max']}")
        lines.append(f"  histogram {hist}")
    b = stats["batching"]
    lines.append(
        f"batching (one replica, {b['batch_size']} {b['batch_unit']} a batch): "
        f"boundaries {b['boundaries']}"
    )
    for key, label in (("bucketed", "bucketed"), ("no_bucketing", "no bucketing")):
        f = b[key]
        lines.append(
            f"  {label}: {f['batches']} batches an epoch, padding {f['padding_fraction']:.2%}, "
            f"{f['distinct_shapes']} distinct batch shapes, at most {f['max_batch_tokens']} "
            f"tokens a batch"
        )
    lines.append(
        "  unbucketed, padded to each batch's longest: padding "
        f"{b['batch_max_padding_fraction']:.2%}"
    )
    return "\n".join(lines)


def measure_pipeline(cfg, seconds: float = 10.0, warmup_batches: int = 20) -> dict:
    """Throughput of the full training pipeline (one replica) and its padding.

    Args:
        cfg: ExperimentConfig (e.g. the G2P benchmark).
        seconds: float. How long to read batches after the warm-up.
        warmup_batches: int. Batches read before timing (pipeline start-up).

    Returns:
        dict: examples_per_s, tokens_per_s (the batch_size unit: examples x padded
        length, per batch), nonpad_tokens_per_s (non-padding tokens of the model inputs:
        source_ids + target_in_ids for seq2seq), batches_per_s,
        measured_padding_fraction (from the batches read), the planned padding
        fractions and distinct shapes per epoch with and without bucketing, and
        setup_s (reading, tokenizing, vocabularies).
    """
    t0 = time.perf_counter()
    module = build_data(cfg)
    dataset = module.train_dataset_fn()(None)
    setup = time.perf_counter() - t0
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    keys = module.task.input_keys
    examples = slots = real = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(iterator)
        arrays = [batch[k].numpy() for k in keys]
        examples += arrays[0].shape[0]
        slots += arrays[0].size
        real += sum(int(np.count_nonzero(a)) for a in arrays)
        batches += 1
    elapsed = time.perf_counter() - start
    corpora = module.train_corpora()
    sides = _sides(module, corpora)
    planned = batch_figures(module.planner(1), sides)
    flat = batch_figures(
        module.planner(1, boundaries=batching.bucket_boundaries(module.max_length, 0, 1.0)),
        sides,
    )
    return {
        "seconds": round(elapsed, 3),
        "setup_s": round(setup, 3),
        "batches_per_s": round(batches / elapsed, 1),
        "examples_per_s": round(examples / elapsed, 1),
        "tokens_per_s": round(slots / elapsed, 1),
        "nonpad_tokens_per_s": round(real / elapsed, 1),
        "measured_padding_fraction": round(1 - real / (slots * len(keys)), 4) if slots else 0,
        "padding_fraction": planned["padding_fraction"],
        "padding_fraction_no_bucketing": flat["padding_fraction"],
        "distinct_shapes_per_epoch": planned["distinct_shapes"],
        "distinct_shapes_per_epoch_no_bucketing": flat["distinct_shapes"],
        "batches_per_epoch": planned["batches"],
        "boundaries": [int(b) for b in module.boundaries],
    }
