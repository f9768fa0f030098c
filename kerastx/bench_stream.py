"""`make bench --only stream`: streamed corpora at 1M and 20M pairs (issue 14).

The corpora are generated once by `scripts/make_stream_corpus.py` (sharded, gzipped,
about 100 bytes of text a pair) under `bench/stream-data/` (or `$KERASTX_STREAM_DATA`).
The model is the benchmark model (`experiments/bench_g2p.yaml`) with the streamed corpus
as its training data (chars tokenizer, lengths up to 128). Rows:

- `first_step`: `kerastx train` in a fresh process, from its start to the first step's
  line in `train_log.jsonl`, and the peak RSS of that process over 30 steps
  (`ru_maxrss` of the child), for each size; at 1M also with `data.stream: memory`
  (read and tokenized into RAM first), the path `auto` takes for small corpora.
- `pipeline`: examples/s and non-pad tokens/s of the streamed pipeline alone (one
  replica), after a warm-up of 20 batches, for each size.
- `resume`: the data state saved after `resume_depth` examples of the 20M corpus: its
  size on disk, the time to write it, and the time from a fresh process's restore to the
  next batch (which must equal the uninterrupted one).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"1m": (1_000_000, 8), "20m": (20_000_000, 64)}


def data_dir() -> str:
    return os.environ.get("KERASTX_STREAM_DATA") or os.path.join("bench", "stream-data")


def ensure_corpus(name: str) -> str:
    """The directory of a generated corpus, made (or finished) by the script if needed."""
    pairs, shards = SIZES[name]
    directory = os.path.join(data_dir(), name)
    if not os.path.exists(os.path.join(directory, "manifest.json")):
        script = os.path.join(ROOT, "scripts", "make_stream_corpus.py")
        subprocess.run(
            [sys.executable, script, directory, "--pairs", str(pairs), "--shards", str(shards)],
            check=True,
        )
    return directory


def overrides(directory: str, run_dir: str, mode: str = "stream") -> list[str]:
    corpus = (
        f"data.train=[{{type: parallel, source: '{directory}/train-*.src.gz', "
        f"target: '{directory}/train-*.tgt.gz'}}]"
    )
    return [
        f"run_dir={run_dir}",
        corpus,
        f"data.dev={{type: parallel, source: {directory}/dev.src, target: {directory}/dev.tgt}}",
        "data.test=null",
        "data.max_source_length=128",
        "data.max_target_length=128",
        "model.max_length=128",
        f"data.stream={mode}",
        "evaluation.every=0",
        "export.enabled=false",
    ]


def first_step(directory: str, mode: str = "stream", steps: int = 30) -> dict:
    """Seconds from `kerastx train` starting to its first logged step; its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = os.path.join(tmp, "run")
        args = [sys.executable, "-m", "kerastx", "train", "experiments/bench_g2p.yaml"]
        for item in overrides(directory, run_dir, mode) + [
            f"training.train_steps={steps}",
            "training.log_every=1",
            f"training.checkpoint_every={steps}",
        ]:
            args += ["--set", item]
        log = os.path.join(run_dir, "train_log.jsonl")
        t0 = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = None
        while proc.poll() is None:
            if first is None and os.path.exists(log) and os.path.getsize(log) > 0:
                first = time.monotonic() - t0
            time.sleep(0.05)
        total = time.monotonic() - t0
        err = proc.stderr.read().decode("utf-8", "replace")
        if proc.returncode:
            raise RuntimeError(f"kerastx train failed ({proc.returncode}): {err[-2000:]}")
        if first is None:
            first = total
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log) as f:
            records = [json.loads(line) for line in f if line.strip()]
        return {
            "mode": mode,
            "first_step_s": first,
            "total_s": total,
            "steps": len(records),
            "peak_rss_bytes": usage.ru_maxrss * 1024,
        }


SENTENCEPIECE = [
    "data.source_tokenizer.type=sentencepiece",
    "data.target_tokenizer.type=sentencepiece",
    "data.shared_vocab=true",
    "data.source_tokenizer.vocab_size=8000",
    "data.target_tokenizer.vocab_size=8000",
    "model.share_embeddings=all",
    "data.vocab_sample=200000",
]


def pipeline(
    directory: str, seconds: float = 10.0, tokenizer: str = "chars", prepared: bool = False
) -> dict:
    """The streamed pipeline alone: examples/s and non-pad tokens/s (one replica).

    Args:
        directory: str. A generated corpus.
        seconds: float. How long to read after the warm-up.
        tokenizer: str. "chars" (the benchmark's) or "sentencepiece" (8k, shared).
        prepared: bool. Read shards made by `kerastx prepare` first (its time reported).
    """
    import numpy as np

    from kerastx.config import load_experiment
    from kerastx.data import build_data
    from kerastx.data import prepare as prepare_lib

    with tempfile.TemporaryDirectory() as tmp:
        extra = SENTENCEPIECE if tokenizer == "sentencepiece" else []
        cfg, _ = load_experiment(["experiments/bench_g2p.yaml"], overrides(directory, tmp) + extra)
        prepare_s = None
        if prepared:
            prepare_s = prepare_lib.prepare(cfg)["seconds"]
        t0 = time.perf_counter()
        module = build_data(cfg)
        setup = time.perf_counter() - t0
        iterator = iter(module.stream_dataset(1))
        t1 = time.perf_counter()
        next(iterator)
        first_batch = time.perf_counter() - t1
        for _ in range(19):
            next(iterator)
        keys = module.task.input_keys
        examples = real = batches = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = next(iterator)
            arrays = [batch[k].numpy() for k in keys]
            examples += arrays[0].shape[0]
            real += sum(int(np.count_nonzero(a)) for a in arrays)
            batches += 1
        elapsed = time.perf_counter() - start
    return {
        "tokenizer": tokenizer,
        "prepared": prepared,
        "prepare_s": prepare_s,
        "setup_s": setup,
        "first_batch_s": first_batch,
        "examples_per_s": examples / elapsed,
        "nonpad_tokens_per_s": real / elapsed,
        "batches_per_s": batches / elapsed,
    }


def save_state(directory: str, depth: int, state_dir: str) -> dict:
    """Reads `depth` examples, saves the iterator, records the next batch's ids."""
    import tensorflow as tf

    from kerastx.config import load_experiment
    from kerastx.data import build_data
    from kerastx.train.stream_input import HostIterator

    cfg, _ = load_experiment(["experiments/bench_g2p.yaml"], overrides(directory, state_dir))
    module = build_data(cfg)
    host = HostIterator(module.stream_dataset(1), tf.distribute.get_strategy(), 1)
    read = 0
    t0 = time.perf_counter()
    while read < depth:
        read += int(next(host)["example_id"].shape[0])
    reading = time.perf_counter() - t0
    t1 = time.perf_counter()
    prefix = tf.train.Checkpoint(iterator=host.iterator).write(os.path.join(state_dir, "state"))
    write_s = time.perf_counter() - t1
    size = sum(
        os.path.getsize(os.path.join(state_dir, n))
        for n in os.listdir(state_dir)
        if n.startswith("state")
    )
    following = next(host)["example_id"].numpy().tolist()
    return {
        "prefix": prefix,
        "examples_read": read,
        "read_s": reading,
        "state_bytes": size,
        "write_s": write_s,
        "next_ids": following,
    }


def restore_state(directory: str, state_dir: str, prefix: str) -> dict:
    """In a fresh process: builds the data, restores the state, reads the next batch."""
    import tensorflow as tf

    from kerastx.config import load_experiment
    from kerastx.data import build_data
    from kerastx.train.stream_input import HostIterator

    t0 = time.perf_counter()
    cfg, _ = load_experiment(["experiments/bench_g2p.yaml"], overrides(directory, state_dir))
    module = build_data(cfg)
    host = HostIterator(module.stream_dataset(1), tf.distribute.get_strategy(), 1)
    t1 = time.perf_counter()
    tf.train.Checkpoint(iterator=host.iterator).read(prefix).assert_consumed()
    ids = next(host)["example_id"].numpy().tolist()
    t2 = time.perf_counter()
    return {"setup_s": t1 - t0, "restore_to_batch_s": t2 - t1, "next_ids": ids}


def resume(directory: str, depth: int) -> dict:
    from kerastx import bench_process

    with tempfile.TemporaryDirectory() as tmp:
        saved = bench_process.run_isolated(
            "bench_stream", f"save_state({directory!r}, {depth}, {tmp!r})", "stream save"
        )
        restored = bench_process.run_isolated(
            "bench_stream",
            f"restore_state({directory!r}, {tmp!r}, {saved['prefix']!r})",
            "stream restore",
        )
    return {
        "depth_examples": saved["examples_read"],
        "read_s": saved["read_s"],
        "state_bytes": saved["state_bytes"],
        "write_s": saved["write_s"],
        "restore_setup_s": restored["setup_s"],
        "restore_to_batch_s": restored["restore_to_batch_s"],
        "exact": restored["next_ids"] == saved["next_ids"],
    }


def bench(quick: bool) -> dict:
    """Every row of the section (quick: 1M only, shorter windows, a shallower resume)."""
    from kerastx import bench_process

    names = ["1m"] if quick else ["1m", "20m"]
    out: dict = {"first_step": {}, "pipeline": {}}
    for name in names:
        directory = ensure_corpus(name)
        modes = ["stream", "memory"] if name == "1m" else ["stream"]
        out["first_step"][name] = [
            bench_process.run_isolated(
                "bench_stream", f"first_step({directory!r}, {mode!r})", f"first step {name}"
            )
            for mode in modes
        ]
        out["pipeline"][name] = bench_process.run_isolated(
            "bench_stream", f"pipeline({directory!r}, {3.0 if quick else 10.0})", "pipeline"
        )
    one = ensure_corpus("1m")
    seconds = 3.0 if quick else 10.0
    for label, args in (
        ("1m sentencepiece", "'sentencepiece'"),
        ("1m prepared", "'chars', prepared=True"),
    ):
        out["pipeline"][label] = bench_process.run_isolated(
            "bench_stream", f"pipeline({one!r}, {seconds}, {args})", f"pipeline {label}"
        )
    deepest = names[-1]
    out["resume"] = resume(ensure_corpus(deepest), 200_000 if quick else 2_000_000)
    out["resume"]["corpus"] = deepest
    return out


def format_section(results: dict) -> list[str]:
    lines = ["streamed corpora (bench_g2p model, chars, generated pairs; one process a row):"]
    lines.append(
        f"  {'corpus':<6} {'path':<7} {'first step s':>12} {'peak RSS GB':>12} "
        f"{'pipeline ex/s':>14} {'tokens/s':>10}"
    )
    for name, rows in results["first_step"].items():
        pipe = results["pipeline"][name]
        for row in rows:
            streamed = row["mode"] == "stream"
            rate = f"{pipe['examples_per_s']:,.0f}" if streamed else "-"
            tokens = f"{pipe['nonpad_tokens_per_s']:,.0f}" if streamed else "-"
            lines.append(
                f"  {name:<6} {row['mode']:<7} {row['first_step_s']:>12.1f} "
                f"{row['peak_rss_bytes'] / 1e9:>12.2f} {rate:>14} {tokens:>10}"
            )
    for label, pipe in results["pipeline"].items():
        if label in results["first_step"]:
            continue
        prepared = f" (prepare {pipe['prepare_s']:.0f} s)" if pipe.get("prepared") else ""
        lines.append(
            f"  {label:<22} pipeline {pipe['examples_per_s']:>9,.0f} ex/s "
            f"{pipe['nonpad_tokens_per_s']:>11,.0f} tokens/s{prepared}"
        )
    r = results["resume"]
    lines.append(
        f"  resume at {r['depth_examples']:,} examples of {r['corpus']}: state "
        f"{r['state_bytes'] / 1e6:.1f} MB written in {r['write_s']:.2f} s; restore to the "
        f"next batch {r['restore_to_batch_s']:.2f} s (+{r['restore_setup_s']:.1f} s setup); "
        f"exact: {r['exact']}"
    )
    return lines
