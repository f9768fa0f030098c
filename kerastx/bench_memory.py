"""Training and decoding steps at the sizes users run, with measured and estimated memory.

`make bench` (section `memory`) and the real-size tests (tests/test_real_size.py) run
these cases: one experiment's model, optimizer and compiled step built by the real
`Trainer` from a config, fed fixed-shape batches of random ids with no padding (the
worst case of a token budget), each case in a fresh process.

Memory is measured two ways around the second step (the first one traces):
- TensorFlow's allocator peak (`tf.config.experimental.get_memory_info`): every tensor
  the step holds, including the variables; compared with `train.memory.estimate_step`.
- the process's peak resident set (VmHWM of /proc/self/status, reset before the step),
  minus the resident set before the model was built: what `top` would show.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import types

import numpy as np

from kerastx import tasks
from kerastx.special_ids import BOS_ID

# Shared model settings of the cases (only the differences are listed per case).
_BASE = {"dropout": 0.1, "position_encoding": "sinusoidal", "norm_position": "pre"}

# Issue 11's experiment (its tied and untied cases below).
_ISSUE_11 = {
    "d_model": 256,
    "num_heads": 4,
    "num_encoder_layers": 3,
    "num_decoder_layers": 3,
    "ffn_dim": 1024,
}

CASES = {
    # Transformer-base width with a 32k vocabulary shared by source, target and output.
    "seq2seq_32k": {
        "type": "seq2seq",
        "vocab": 32000,
        "batch": (128, 32),
        "model": {
            "d_model": 512,
            "num_heads": 8,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "ffn_dim": 2048,
            "share_embeddings": "all",
        },
        "decode": {"rows": 128, "source_length": 32, "cache_length": 128},
    },
    "decoder_lm_32k": {
        "type": "decoder_lm",
        "vocab": 32000,
        "batch": (32, 128),
        "model": {
            "d_model": 512,
            "num_heads": 8,
            "num_layers": 2,
            "ffn_dim": 2048,
            "tie_embeddings": True,
        },
        "decode": {"rows": 32, "cache_length": 256},
    },
    "classifier_32k": {
        "type": "encoder_classifier",
        "vocab": 32000,
        "classes": 16,
        "batch": (32, 128),
        "model": {"d_model": 512, "num_heads": 8, "num_layers": 2, "ffn_dim": 2048},
    },
    # Issue 11's failing experiment: shared 8k vocabulary, d256, 3+3 layers, 4096-token
    # batches of 273 x 15; tied (share_embeddings: all) and untied for comparison.
    "seq2seq_8k_tied": {
        "type": "seq2seq",
        "vocab": 8000,
        "batch": (273, 15),
        "model": {**_ISSUE_11, "share_embeddings": "all"},
    },
    "seq2seq_8k_untied": {
        "type": "seq2seq",
        "vocab": 8000,
        "batch": (273, 15),
        "model": {**_ISSUE_11, "share_embeddings": "none"},
    },
}
REAL_SIZE_CASES = ("seq2seq_32k", "decoder_lm_32k", "classifier_32k")


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - not Linux


def _reset_peak_rss() -> None:
    """Resets VmHWM to the current resident set (Linux >= 4.0), where allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:  # pragma: no cover - the peak then covers the whole process
        pass


def _tf_memory():
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("CPU:0")


class FixedBatches:
    """The trainer's data contract with one fixed batch shape of random, unpadded ids.

    Args:
        model_type: str. The family.
        vocab_size: int. Ids are drawn from 4 .. vocab_size - 1.
        batch: (examples, length). Every sequence is `length` tokens (EOS/BOS included).
        num_classes: int. Classifier labels.
        seed: int.
    """

    def __init__(self, model_type, vocab_size, batch, num_classes=0, seed=0):
        self.model_type = model_type
        # What the trainer reads of a DataModule: vocabulary sizes and the label count.
        self.source_tokenizer = self.target_tokenizer = types.SimpleNamespace(vocab_size=vocab_size)
        self.labels = range(num_classes) if num_classes else None
        rng = np.random.default_rng(seed)
        b, t = batch
        out = {"example_id": np.arange(b, dtype=np.int64)}
        tokens = {}  # one draw per field, shared by the keys framing it
        for key, (field, framing) in tasks.get(model_type).layout.items():
            if framing is None:  # one label per example
                out[key] = rng.integers(0, num_classes, size=(b,)).astype(np.int32)
                continue
            if field not in tokens:
                tokens[field] = rng.integers(4, vocab_size, size=(b, t)).astype(np.int32)
            ids = tokens[field]
            if framing == "bos":  # teacher forcing: BOS + tokens in, tokens out
                ids = np.concatenate([np.full((b, 1), BOS_ID, np.int32), ids[:, :-1]], 1)
            out[key] = ids
        self.batch = out

    def train_dataset_fn(self, start=(0, 0)):
        import tensorflow as tf

        batch = {k: tf.constant(v) for k, v in self.batch.items()}

        def fn(input_context=None):
            del input_context

            def add_position(index):
                return {**batch, "epoch": tf.constant(0, tf.int64), "index": index}

            return tf.data.Dataset.range(int(start[1]), 2**62).map(add_position)

        return fn


def _experiment(case: dict, run_dir: str, overrides=()):
    """The ExperimentConfig of a case (a synthetic or labelled corpus that is never read)."""
    from kerastx.config import load_experiment

    model_type = case["type"]
    corpus = (
        {"type": "labelled", "path": "unused.tsv"}
        if "label" in tasks.get(model_type).fields
        else {"type": "synthetic", "task": "copy"}
    )
    b, t = case["batch"]
    data = {
        "train": [corpus],
        "max_source_length": t,
        "max_target_length": t,
        "batch_size": b * t,
        "shuffle_buffer": 0,
    }
    if case["model"].get("share_embeddings") == "all":
        data["shared_vocab"] = True
    model = {"type": model_type, **_BASE, **case["model"], "max_length": 1024}
    text = json.dumps(
        {
            "data": data,
            "model": model,
            "training": {
                "train_steps": 10,
                "learning_rate": 1e-4,
                "warmup_steps": 1,
                "label_smoothing": 0.1,
            },
            "evaluation": {"every": 0},
            "export": {"enabled": False},
        }
    )
    path = os.path.join(run_dir, "experiment.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)  # JSON is YAML
    cfg, _ = load_experiment([path], [f"run_dir={os.path.join(run_dir, 'run')}", *overrides])
    return cfg


def measure_train(name: str, steps: int = 2, overrides=()) -> dict:
    """Builds case `name` with the real Trainer and runs `steps` training steps.

    Returns:
        dict: parameters, batch shape, the estimate (`train.memory.estimate_step`), the
        TF allocator peak of the last step, the resident-set peak above the resident set
        before the model was built, step times (the first includes tracing).
    """
    import tensorflow as tf

    from kerastx.train import memory
    from kerastx.train.loop import Trainer

    case = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _experiment(case, tmp, overrides)
        data = FixedBatches(case["type"], case["vocab"], case["batch"], case.get("classes", 0))
        rss_start = _rss_bytes("VmRSS")
        tf_start = _tf_memory()["current"]
        trainer = Trainer(cfg, data=data, progress=False)
        iterator = trainer._iterator()
        times, peaks, rss_peaks, losses = [], [], [], []
        for _ in range(steps):
            tf.config.experimental.reset_memory_stats("CPU:0")
            _reset_peak_rss()
            t0 = time.perf_counter()
            stats, _, _ = trainer.steps.run(iterator, 1)
            times.append(time.perf_counter() - t0)
            peaks.append(_tf_memory()["peak"] - tf_start)
            rss_peaks.append(_rss_bytes("VmHWM") - rss_start)
            losses.append(float(stats["loss_sum"][0] / max(stats["tokens"][0], 1.0)))
        estimate = memory.estimate_step(
            trainer.model,
            {k: v.shape for k, v in data.batch.items()},
            trainer.optimizer,
            cfg.training.mixed_precision,
        )
        row = {
            "case": name,
            "type": case["type"],
            "vocab_size": case["vocab"],
            "batch_shape": list(case["batch"]),
            "tokens": int(np.prod(case["batch"])),
            "parameters": int(trainer.model.count_params()),
            "estimate": estimate,
            "tf_peak_bytes": int(peaks[-1]),
            "tf_peaks_bytes": [int(p) for p in peaks],
            "rss_peak_bytes": int(rss_peaks[-1]),
            "first_rss_peak_bytes": int(rss_peaks[0]),
            "step_times_s": times,
            "step_time_s": float(np.median(times[1:])) if steps > 1 else times[0],
            "losses": losses,
            "overrides": list(overrides),
        }
    return row


def isolated(function: str, *args) -> dict:
    """`function(*args)` of this module in a fresh Python process; its result dict."""
    from kerastx.bench_process import run_isolated

    call = f"{function}({', '.join(repr(a) for a in args)})"
    return run_isolated("bench_memory", call, call)


def _nbytes(structure) -> int:
    import tensorflow as tf

    return int(
        sum(
            t.shape.num_elements() * t.dtype.size
            for t in tf.nest.flatten(structure)
            if hasattr(t, "dtype")
        )
    )


def measure_decode(name: str) -> dict:
    """One cached decoding step of case `name` at its decoding size, measured.

    A seq2seq model encodes `rows` random sources and builds a cache of `cache_length`
    steps; a decoder LM builds an empty cache. Two steps are decoded (BOS at index 0,
    then a token at index 1) and their logits compared with one full (uncached) pass
    over the same prefix. The memory figure is TensorFlow's allocator peak during the
    second step; its estimate: the weights, the cache twice (read, and the updated copy
    the step returns) plus one layer's self-attention keys and values (the write's
    temporary), the logits twice and the step's per-token activations.
    """
    import tensorflow as tf

    from kerastx.models.build import build_model
    from kerastx.train import memory

    case = CASES[name]
    spec = case["decode"]
    rows, cache_length = spec["rows"], spec["cache_length"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _experiment(case, tmp)
        data = FixedBatches(case["type"], case["vocab"], case["batch"], case.get("classes", 0))
        tf_start = _tf_memory()["current"]
        model = build_model(tasks.create(cfg), data)
        rng = np.random.default_rng(1)
        bos = tf.fill([rows], 1)
        second = tf.constant(rng.integers(4, case["vocab"], size=(rows,)).astype(np.int32))
        if "target" in tasks.get(case["type"]).fields:  # an encoder-decoder
            source = tf.constant(
                rng.integers(4, case["vocab"], size=(rows, spec["source_length"])).astype(np.int32)
            )

            @tf.function
            def prefill():
                return model.init_cache(model.encode(source), cache_length)

            @tf.function
            def full(prefix):
                return model.decode(prefix, model.encode(source))

        else:

            @tf.function
            def prefill():
                return model.init_cache(rows, cache_length)

            @tf.function
            def full(prefix):
                return model({"token_ids": prefix})

        step = tf.function(lambda ids, cache, index: model.decode_step(ids, cache, index))
        cache = prefill()
        logits0, cache = step(bos, cache, tf.constant(0))
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = _tf_memory()["current"] - tf_start
        t0 = time.perf_counter()
        logits1, cache = step(second, cache, tf.constant(1))
        logits1.numpy()
        seconds = time.perf_counter() - t0
        peak = _tf_memory()["peak"] - tf_start
        reference = full(tf.stack([bos, second], axis=1))  # (rows, 2, V)
        error = max(
            float(tf.reduce_max(tf.abs(logits0 - reference[:, 0]))),
            float(tf.reduce_max(tf.abs(logits1 - reference[:, 1]))),
        )
        # How far apart the two positions' logits are: the scale of the error above.
        position_gap = float(tf.reduce_max(tf.abs(reference[:, 0] - reference[:, 1])))
        params = memory.variable_bytes(model.variables)
        cache_bytes = _nbytes(cache)
        logits_bytes = rows * case["vocab"] * 4
        d, f = model.d_model, model.ffn_dim
        layers = len(model.decoder_layers)
        activations = layers * rows * (20 * d + 2 * f) * 4
        # The step reads the cache and returns an updated copy; writing one layer's keys
        # and values takes one more temporary of that layer's self-attention cache.
        self_cache = _nbytes([(c["self_key"], c["self_value"]) for c in cache["layers"]])
        estimate = params + 2 * cache_bytes + self_cache // layers + 2 * logits_bytes + activations
        return {
            "case": name,
            "type": case["type"],
            "rows": rows,
            "cache_length": cache_length,
            "source_length": spec.get("source_length"),
            "parameters": int(model.count_params()),
            "cache_bytes": cache_bytes,
            "estimate_bytes": int(estimate),
            "tf_before_bytes": int(before),
            "tf_peak_bytes": int(peak),
            "step_time_s": seconds,
            "max_abs_error_vs_full_pass": error,
            "position_gap": position_gap,
        }


def bench(quick: bool = False) -> dict:
    """`make bench` section `memory`: every case's training step, the decoding steps, and
    issue 11's comparison of tied and untied output layers.

    Tied and untied run in alternating fresh processes (tied, untied, tied, untied), each
    timing `steps` steps after the traced first one, so the two are compared within the
    run-to-run noise measured here.
    """
    steps = 3 if quick else 11
    rounds = 1 if quick else 2
    out: dict = {"train": [], "decode": [], "tied_vs_untied": {}}
    for name in REAL_SIZE_CASES:
        out["train"].append(isolated("measure_train", name, 3))
    for name in ("seq2seq_32k", "decoder_lm_32k"):
        out["decode"].append(isolated("measure_decode", name))
    pair: dict = {"seq2seq_8k_tied": [], "seq2seq_8k_untied": []}
    for _ in range(rounds):
        for name in pair:
            pair[name].append(isolated("measure_train", name, steps))
    for name, rows in pair.items():
        times = [t for row in rows for t in row["step_times_s"][1:]]
        out["tied_vs_untied"][name] = {
            "rows": rows,
            "step_time_s": float(np.median(times)),
            "step_time_min_s": float(min(times)),
            "step_time_max_s": float(max(times)),
            "process_medians_s": [row["step_time_s"] for row in rows],
            "tf_peak_bytes": max(row["tf_peak_bytes"] for row in rows),
            "rss_peak_bytes": max(row["rss_peak_bytes"] for row in rows),
            "parameters": rows[0]["parameters"],
        }
    tied, untied = (out["tied_vs_untied"][k] for k in pair)
    out["tied_vs_untied"]["tied_over_untied_step_time"] = (
        tied["step_time_s"] / untied["step_time_s"]
    )
    return out


def format_section(result: dict) -> list[str]:
    """The bench table's lines for the `memory` section."""
    from kerastx.train.memory import format_bytes

    lines = [
        "one training step at real sizes (TF allocator peak vs the shape estimate; peak RSS "
        "above the process before the model; each case in a fresh process):",
        f"  {'case':<16} {'batch':>9} {'params':>11} {'estimate':>10} {'TF peak':>10} "
        f"{'ratio':>6} {'peak RSS':>10} {'step s':>7}",
    ]
    for r in result["train"]:
        b, t = r["batch_shape"]
        est = r["estimate"]["total"]
        lines.append(
            f"  {r['case']:<16} {f'{b}x{t}':>9} {r['parameters']:>11,} "
            f"{format_bytes(est):>10} {format_bytes(r['tf_peak_bytes']):>10} "
            f"{r['tf_peak_bytes'] / est:>6.2f} {format_bytes(r['rss_peak_bytes']):>10} "
            f"{r['step_time_s']:>7.2f}"
        )
    for r in result["decode"]:
        ratio = r["tf_peak_bytes"] / r["estimate_bytes"]
        lines.append(
            f"  {r['case'] + ' decode':<22} rows {r['rows']}, cache {r['cache_length']}: "
            f"TF peak {format_bytes(r['tf_peak_bytes'])} vs estimate "
            f"{format_bytes(r['estimate_bytes'])} ({ratio:.2f}), "
            f"step {1000 * r['step_time_s']:.0f} ms, max |cached - full pass| "
            f"{r['max_abs_error_vs_full_pass']:.1e}"
        )
    pair = result["tied_vs_untied"]
    lines.append(
        "issue 11 experiment (shared 8k vocabulary, d256, 3+3 layers, 273x15 batches), "
        "tied vs untied output layer:"
    )
    for name in ("seq2seq_8k_tied", "seq2seq_8k_untied"):
        p = pair[name]
        lines.append(
            f"  {name:<18} step {p['step_time_s']:.3f} s (range {p['step_time_min_s']:.3f}-"
            f"{p['step_time_max_s']:.3f}, per process "
            f"{', '.join(f'{x:.3f}' for x in p['process_medians_s'])}), TF peak "
            f"{format_bytes(p['tf_peak_bytes'])}, peak RSS {format_bytes(p['rss_peak_bytes'])}"
        )
    lines.append(f"  tied / untied step time: {pair['tied_over_untied_step_time']:.3f}")
    return lines
