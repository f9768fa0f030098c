"""Measures how a streamed tf.data pipeline resumes mid-epoch (issue 14's first decision).

Usage: .venv/bin/python scripts/measure_stream_resume.py DIR [PAIRS] [SHARDS] [SKIP]

Writes PAIRS generated sentence pairs (default 10M) as SHARDS gzipped TSV shards under
DIR (reused when present), then for the pipeline kerastx would stream with (file
interleave -> TextLineDataset(GZIP) -> split + in-graph byte tokenization -> shuffle
buffer 100k -> length buckets -> batches), reads SKIP examples (default 2M) and saves
the iterator with `tf.train.Checkpoint`, two ways:

- "iterator": TensorFlow's default iterator checkpoint (every buffer saved);
- "symbolic": `Options.experimental_symbolic_checkpoint` (positions only, where the
  ops support it).

For each it prints the checkpoint size, the save and restore times, and whether the
next 50 batches after the restore equal those of the uninterrupted iterator. Plain
Python, no kerastx import: the figures are TensorFlow's, not the framework's.
"""

from __future__ import annotations

import gzip
import os
import random
import sys
import time

import tensorflow as tf

WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2 + i % 8))
    for i in range(5000)
]


def make_corpus(directory: str, pairs: int, shards: int) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = [
        os.path.join(directory, f"train-{i:05d}-of-{shards:05d}.tsv.gz") for i in range(shards)
    ]
    if all(os.path.exists(p) for p in paths):
        return paths
    rng = random.Random(0)
    per = pairs // shards
    for shard, path in enumerate(paths):
        lines = []
        for n in range(per):
            src = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
            lines.append(f"{src}\t{src[::-1]}\t{shard * per + n}\n")
        with gzip.open(path + ".tmp", "wt", encoding="utf-8", compresslevel=1) as f:
            f.writelines(lines)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}", flush=True)
    return paths


def pipeline(paths: list[str], symbolic: bool) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=1)
    lines = files.interleave(
        lambda p: tf.data.TextLineDataset(p, compression_type="GZIP"),
        cycle_length=4,
        block_length=16,
        num_parallel_calls=4,
        deterministic=True,
    )

    def encode(line):
        fields = tf.strings.split(line, "\t")
        src = tf.io.decode_raw(fields[0], tf.uint8)
        tgt = tf.io.decode_raw(fields[1], tf.uint8)
        return {
            "src": tf.cast(src, tf.int32),
            "tgt": tf.cast(tgt, tf.int32),
            "id": tf.strings.to_number(fields[2], tf.int64),
        }

    ds = lines.map(encode, num_parallel_calls=4, deterministic=True)
    ds = ds.shuffle(100_000, seed=2)
    ds = ds.bucket_by_sequence_length(
        lambda ex: tf.shape(ex["src"])[0],
        bucket_boundaries=[16, 24, 32, 48, 64, 96],
        bucket_batch_sizes=[256, 192, 128, 96, 64, 48, 32],
    )
    ds = ds.prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_symbolic_checkpoint = symbolic
    return ds.with_options(options)


def measure(paths, skip: int, symbolic: bool, workdir: str) -> dict:
    name = "symbolic" if symbolic else "iterator"
    it = iter(pipeline(paths, symbolic))
    start, seen = time.perf_counter(), 0
    while seen < skip:
        seen += int(next(it)["id"].shape[0])
    read_s = time.perf_counter() - start
    ckpt = tf.train.Checkpoint(it=it)
    prefix = os.path.join(workdir, name)
    t0 = time.perf_counter()
    path = ckpt.write(prefix)
    save_s = time.perf_counter() - t0
    size = sum(
        os.path.getsize(os.path.join(workdir, f))
        for f in os.listdir(workdir)
        if f.startswith(os.path.basename(prefix) + ".")
    )
    expected = [next(it)["id"].numpy().tolist() for _ in range(50)]
    fresh = iter(pipeline(paths, symbolic))
    t0 = time.perf_counter()
    tf.train.Checkpoint(it=fresh).read(path).assert_consumed()
    first = next(fresh)["id"].numpy().tolist()
    restore_s = time.perf_counter() - t0
    got = [first] + [next(fresh)["id"].numpy().tolist() for _ in range(49)]
    return {
        "mode": name,
        "examples_read": seen,
        "read_s": round(read_s, 1),
        "examples_per_s": round(seen / read_s),
        "checkpoint_mb": round(size / 2**20, 2),
        "save_s": round(save_s, 2),
        "restore_to_first_batch_s": round(restore_s, 2),
        "same_next_50_batches": got == expected,
    }


def main(argv):
    directory = argv[1]
    pairs = int(argv[2]) if len(argv) > 2 else 10_000_000
    shards = int(argv[3]) if len(argv) > 3 else 16
    skip = int(argv[4]) if len(argv) > 4 else 2_000_000
    paths = make_corpus(directory, pairs, shards)
    workdir = os.path.join(directory, "ckpt")
    os.makedirs(workdir, exist_ok=True)
    for symbolic in (False, True):
        try:
            print(measure(paths, skip, symbolic, workdir), flush=True)
        except Exception as err:  # noqa: BLE001 - a mode TF refuses is a result too
            print({"mode": "symbolic" if symbolic else "iterator", "error": str(err)[:300]})


if __name__ == "__main__":
    main(sys.argv)
