"""`make bench` / `kerastx bench`: speed figures, printed as a table and written as JSON.

Every figure that depends on the machine is reported next to a rate measured in the same
run: the float32 matmul rate (1024 x 1024, `train.flops.matmul_rate`) for training
throughput (as model-FLOPs utilisation), and the training consumption for the input
pipeline. Sections (select with `--only`):

- `matmul`: the machine's float32 matmul rate.
- `pipeline`: input pipeline examples/s and tokens/s on the G2P training set, padding
  with and without bucketing, distinct batch shapes per epoch.
- `train`: training tokens/s (source + target, non-pad) and MFU for the quickstart
  model and the benchmark model (`experiments/bench_g2p.yaml`), XLA off and on. Each
  row runs in a fresh process (rows sharing one process ran ~5-10 % slower: threads and
  caches of earlier rows) as 4 timed windows, with the matmul rate measured there
  before each window and after the last; a row reports its median window and the range
  (single rows varied by +-5 % from run to run on this 2-core machine).
- `memory`: one training step of each family at real sizes (32k vocabularies, d512,
  4096-token batches) and one cached decoding step: TensorFlow's allocator peak against
  the estimate from the shapes, peak RSS, step time; and issue 11's experiment (shared
  8k vocabulary, d256, 3+3 layers) with a tied and an untied output layer, in
  alternating processes (`kerastx.bench_memory`).
- `decode_cache`: greedy decoding of 64 tokens, batch 32, with and without the cache.
- `decode`: decoding throughput (words/s, sentences/s) on the G2P test set, greedy and
  beam 4, in the framework and through the exported SavedModel, plus greedy without the
  key/value cache (a full decoder pass over the prefix at every step); the model is
  `runs/quickstart` when `make train` made it, else the quickstart model trained 400
  steps (speed, not quality).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time

import tensorflow as tf

from kerastx import bench_process

SECTIONS = ("matmul", "pipeline", "train", "memory", "decode_cache", "decode", "stream")
ROOT_EXPERIMENTS = "experiments"


def _cfg(name: str, run_dir: str, *overrides: str):
    from kerastx.config import load_experiment

    path = os.path.join(ROOT_EXPERIMENTS, f"{name}.yaml")
    cfg, _ = load_experiment([path], [f"run_dir={run_dir}", *overrides])
    return cfg


def bench_matmul() -> dict:
    from kerastx.train.flops import measure_matmul_rate

    rates = [measure_matmul_rate(seconds=0.5) for _ in range(3)]
    return {"matmul_flops_per_s": max(rates), "matmul_runs": rates}


def bench_pipeline(quick: bool) -> dict:
    from kerastx.data import measure_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg("bench_g2p", tmp)
        return measure_pipeline(cfg, seconds=2.0 if quick else 8.0)


def training_overrides(train_steps: int, jit: bool) -> list[str]:
    """What a training row changes in its experiment: no dev/test set, no evaluation,
    export or checkpoint (the best checkpoint is chosen by loss: without a dev set the
    experiment's own best_metric is refused)."""
    return [
        f"training.train_steps={train_steps}",
        f"training.jit_compile={str(jit).lower()}",
        "evaluation.every=0",
        "evaluation.best_metric=loss",
        "export.enabled=false",
        "data.dev=null",
        "data.test=null",
        "training.checkpoint_every=1000000",
    ]


def bench_training(name: str, jit: bool, steps: int, warmup: int, windows: int = 4) -> dict:
    """Tokens/s and MFU of `windows` timed windows of `steps` training steps each, after
    `warmup` steps (tracing, XLA compilation of the most frequent batch shapes).

    The float32 matmul rate is measured just before each window and after the last one;
    each window's MFU is against the higher of the two rates around it (the conservative
    choice), so a window slowed by something else on the machine is compared with a
    rate measured under the same conditions. The row reports the median window (tokens/s,
    MFU, step time) and every window's figures.
    """
    from kerastx.train.flops import measure_matmul_rate
    from kerastx.train.loop import Trainer
    from kerastx.train.summaries import Window

    def rate_now() -> float:
        return max(measure_matmul_rate(seconds=0.3) for _ in range(2))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(name, tmp, *training_overrides(warmup + steps * windows, jit))
        trainer = Trainer(cfg, progress=False)
        flops = trainer.task.flops(trainer.model)
        iterator = trainer._iterator()
        chunk = cfg.training.steps_per_execution
        t0 = time.perf_counter()
        for done in range(0, warmup, chunk):
            trainer.steps.run(iterator, min(chunk, warmup - done))
        warm_seconds = time.perf_counter() - t0
        rates = [rate_now()]
        measured = []
        for _ in range(windows):
            window = Window()
            for done in range(0, steps, chunk):
                n = min(chunk, steps - done)
                stats, seconds, traced = trainer.steps.run(iterator, n)
                window.add(stats, seconds, n, timed=not traced)
            rates.append(rate_now())
            measured.append(window.metrics(flops, max(rates[-2:])))
        params = trainer.model.count_params()
    timed = [m for m in measured if "mfu" in m]
    if not timed:
        raise RuntimeError(f"bench row {name}: every window traced; raise the warm-up steps")
    middle = sorted(timed, key=lambda m: m["mfu"])[(len(timed) - 1) // 2]  # lower median
    return {
        "experiment": name,
        "jit_compile": jit,
        "steps": steps * windows,
        "windows": windows,
        "warmup_steps": warmup,
        "warmup_s": warm_seconds,
        "parameters": int(params),
        "tokens_per_s": middle["tokens_per_second"],
        "step_time_s": middle["step_time"],
        "mfu": middle["mfu"],
        "mfu_windows": [m["mfu"] for m in timed],
        "tokens_per_s_windows": [m["tokens_per_second"] for m in timed],
        "matmul_flops_per_s": max(rates),
        "matmul_rates": rates,
        "padding_share": measured[-1]["padding_share"],
        "final_loss": measured[-1]["loss"],
    }


def bench_training_isolated(
    name: str, jit: bool, steps: int, warmup: int, windows: int = 4
) -> dict:
    """`bench_training` in a fresh Python process, so that no earlier row's threads, caches
    or compiled graphs share the two cores with it."""
    return bench_process.run_isolated(
        "bench",
        f"bench_training({name!r}, {jit!r}, {steps!r}, {warmup!r}, {windows!r})",
        f"bench row {name} (xla={jit})",
    )


def bench_decode_cache() -> dict:
    from kerastx.bench_decode import measure_cached_vs_uncached

    return measure_cached_vs_uncached(batch_size=32, steps=64)


def _decode_model(tmp: str) -> tuple[str, str]:
    """A trained G2P run to decode with: runs/quickstart if `make train` made one (its
    outputs have realistic lengths), else the quickstart model trained 400 steps in
    `tmp`. Returns (run directory, description)."""
    from kerastx.train.loop import Trainer

    made = os.path.join("runs", "quickstart")
    if tf.train.latest_checkpoint(os.path.join(made, "checkpoints")):
        return made, "runs/quickstart (make train)"
    cfg = _cfg(
        "quickstart",
        tmp,
        "training.train_steps=400",
        "evaluation.every=0",
        "export.enabled=false",
        "training.checkpoint_every=400",
    )
    Trainer(cfg, progress=False).run()
    return tmp, "quickstart model trained 400 steps"


def bench_decode(quick: bool) -> dict:
    """Words/s on the G2P test set: greedy and beam 4; framework (graph, and XLA with early
    exit) and the exported SavedModel's `decode` signature. Tracing/compilation happens on
    a warm-up batch and is not timed."""
    from kerastx import export, inference
    from kerastx.runs import load_run

    tmp = tempfile.mkdtemp(prefix="kerastx-bench-")
    try:
        run_dir, model_name = _decode_model(tmp)
        run = load_run(run_dir)
        words = 640 if quick else 3200
        batch = run.cfg.decoding.batch_size
        batches, sources = [], []
        for b in run.data.eval_dataset("test", batch):
            batches.append({"source_ids": b["source_ids"]})
            sources.extend(t.decode("utf-8") for t in b["source_text"].numpy())
            if len(sources) >= words:
                break
        out: dict = {"model": model_name, "test_words": len(sources), "batch_size": batch}
        module_dir = export.export_model(run.task, run.model, run.data, os.path.join(tmp, "export"))
        fn = tf.saved_model.load(module_dir).signatures["decode"]
        for strategy, beam in (("greedy", 1), ("beam", 4)):
            settings = inference.settings_from_config(
                run.cfg.decoding, strategy=strategy, beam_size=beam, n_best=1
            )
            if strategy == "greedy":
                from kerastx.bench_decode import uncached_greedy_fn

                uncached = uncached_greedy_fn(run.model, run.cfg.decoding.max_length)
                uncached(batches[0]["source_ids"])  # warm-up: tracing
                t0 = time.perf_counter()
                for b in batches:
                    uncached(b["source_ids"]).numpy()
                out["framework_uncached_greedy_words_per_s"] = len(sources) / (
                    time.perf_counter() - t0
                )
            for way, jit in (("framework", False), ("framework_xla", True)):
                decoder = inference.Decoder(run.model, run.task, settings, jit_compile=jit)
                for b in batches:  # warm-up: traces (and compiles every XLA bucket)
                    decoder(b)
                t0 = time.perf_counter()
                for b in batches:
                    decoder(b).ids.numpy()
                out[f"{way}_{strategy}_words_per_s"] = len(sources) / (time.perf_counter() - t0)
            args = {
                "beam_size": tf.constant(beam),
                "n_best": tf.constant(1),
                "length_penalty": tf.constant(0.6),
                "sampling": tf.constant(False),
                "temperature": tf.constant(1.0),
                "top_k": tf.constant(0),
                "top_p": tf.constant(1.0),
                "seed": tf.constant(0),
                "max_length": tf.constant(run.cfg.decoding.max_length),
            }
            texts = [tf.constant(sources[i : i + batch]) for i in range(0, len(sources), batch)]
            fn(text=texts[0], **args)
            t0 = time.perf_counter()
            for text in texts:
                fn(text=text, **args)["output"].numpy()
            out[f"savedmodel_{strategy}_words_per_s"] = len(sources) / (time.perf_counter() - t0)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    quick: bool = False, output: str = "bench/results.json", only: list[str] | None = None
) -> int:
    """Runs the benchmark sections, prints a table, writes JSON to `output`."""
    from kerastx.errors import KerastxError

    sections = list(only or SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise KerastxError(f"--only: unknown section(s) {unknown}; choose from {SECTIONS}")
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        },
        "quick": quick,
    }
    rate = bench_matmul()
    results["matmul"] = rate
    steps, warmup = (5, 10) if quick else (25, 40)  # steps per window, 4 windows
    if "pipeline" in sections:
        results["pipeline"] = bench_pipeline(quick)
    if "train" in sections:
        results["train"] = [
            bench_training_isolated(name, jit, steps, warmup)
            for name in ("quickstart", "bench_g2p")
            for jit in (False, True)
        ]
    if "memory" in sections:
        from kerastx import bench_memory

        results["memory"] = bench_memory.bench(quick)
    if "decode_cache" in sections:
        results["decode_cache"] = bench_decode_cache()
    if "decode" in sections:
        results["decode"] = bench_decode(quick)
    if "stream" in sections:
        from kerastx import bench_stream

        results["stream"] = bench_stream.bench(quick)
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=float)
    print(format_table(results))
    print(f"wrote {output}")
    return 0


def format_table(results: dict) -> str:
    """The human-readable summary of a results dict."""
    lines = []
    rate = results["matmul"]["matmul_flops_per_s"]
    lines.append(f"matmul float32 1024x1024: {rate / 1e9:.1f} GFLOP/s (best of 3)")
    if "pipeline" in results:
        p = results["pipeline"]
        lines.append(
            f"input pipeline (G2P, bench_g2p): {p['examples_per_s']:,.0f} examples/s, "
            f"{p['nonpad_tokens_per_s']:,.0f} non-pad tokens/s"
        )
        lines.append(
            f"  padding {100 * p['padding_fraction']:.1f}% bucketed "
            f"({p['distinct_shapes_per_epoch']} batch shapes an epoch) vs "
            f"{100 * p['padding_fraction_no_bucketing']:.1f}% unbucketed "
            f"({p['distinct_shapes_per_epoch_no_bucketing']} shapes)"
        )
    if "train" in results:
        lines.append(
            "training (source+target non-pad tokens/s; each row in a fresh process, the "
            "median of its windows; MFU vs the matmul rate measured around each window):"
        )
        lines.append(
            f"  {'experiment':<12} {'xla':<5} {'params':>10} {'tokens/s':>10} "
            f"{'MFU':>6} {'MFU range':>13} {'step ms':>8} {'matmul GF/s':>12}"
        )
        for r in results["train"]:
            row_rate = r.get("matmul_flops_per_s", rate)
            windows = r.get("mfu_windows") or [r["mfu"]]
            spread = f"{100 * min(windows):.1f}-{100 * max(windows):.1f}%"
            lines.append(
                f"  {r['experiment']:<12} {str(r['jit_compile']):<5} "
                f"{r['parameters']:>10,} {r['tokens_per_s']:>10,.0f} "
                f"{100 * r['mfu']:>5.1f}% {spread:>13} {1000 * r['step_time_s']:>8.1f} "
                f"{row_rate / 1e9:>12.1f}"
            )
        if "pipeline" in results:
            best = max(r["tokens_per_s"] for r in results["train"])
            supply = results["pipeline"].get("nonpad_tokens_per_s", 0)
            lines.append(
                f"  pipeline supply / fastest training consumption: {supply / max(best, 1):.0f}x"
            )
    if "memory" in results:
        from kerastx import bench_memory

        lines.extend(bench_memory.format_section(results["memory"]))
    if "decode_cache" in results:
        d = results["decode_cache"]
        lines.append(
            f"greedy decoding 64 tokens, batch 32: cached {d['cached_s']:.3f} s, "
            f"uncached {d['uncached_s']:.3f} s, speedup {d['speedup']:.2f}x"
        )
    if "decode" in results:
        d = results["decode"]
        lines.append(
            f"decoding G2P test ({d['test_words']} words, batch {d['batch_size']}, "
            f"{d['model']}), words/s:"
        )
        for way in ("framework", "framework_xla", "savedmodel"):
            lines.append(
                f"  {way:<13} greedy {d[f'{way}_greedy_words_per_s']:8,.0f}   "
                f"beam 4 {d[f'{way}_beam_words_per_s']:8,.0f}"
            )
        if "framework_uncached_greedy_words_per_s" in d:
            uncached = d["framework_uncached_greedy_words_per_s"]
            lines.append(
                f"  {'no cache':<13} greedy {uncached:8,.0f}   (cached framework greedy is "
                f"{d['framework_greedy_words_per_s'] / max(uncached, 1e-9):.2f}x)"
            )
    if "stream" in results:
        from kerastx import bench_stream

        lines.extend(bench_stream.format_section(results["stream"]))
        if "train" in results:
            best = max(r["tokens_per_s"] for r in results["train"])
            for name, pipe in results["stream"]["pipeline"].items():
                lines.append(
                    f"  streamed pipeline {name} / fastest training consumption: "
                    f"{pipe['nonpad_tokens_per_s'] / max(best, 1):.0f}x"
                )
    return "\n".join(lines)
