"""`kerastx prepare EXP`: tokenize the training corpora once into TFRecord shards.

An optional step (like fairseq-preprocess or tensor2tensor's datagen): streaming raw
text works without it, and costs the tokenization of every line in every epoch. After
`prepare`, training streams `run_dir/prepared/` instead: the same examples, ids, checks
and counts (the length policy and empty examples are applied when training reads, so
`data.max_*_length` may change without preparing again), only without tokenizing.

Layout of `run_dir/prepared/`:
- `shard-00003.tfrecord`: the lines of input shard 3 (a file, or a source/target
  pair), one record per chunk of `stream.CHUNK` lines, each a `tf.train.Example` of
  int64 lists (`Stream.prepared_keys`: file, line, example_id, replaced,
  source/values, source/lengths, ...). Written under a temporary name and renamed.
- `manifest.json`: what the shards were made from (every input file's path, size and
  modification time, the vocabulary manifest, the tokenizer settings) and the shards
  done. A rerun keeps the finished shards and makes the rest (resumable); training
  refuses prepared shards whose inputs or vocabularies changed since.

Parallel: the checks and tokenization of each chunk run in tf.data's parallel map (every
core), shard after shard; a progress line counts shards and examples.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

from kerastx.data.errors import DataError
from kerastx.data.prepared import (
    PREPARED_DIR,
    difference,
    expected_manifest,
    read_manifest,
    shard_path,
    write_manifest,
)

logger = logging.getLogger("kerastx.data")


def _example(chunk: dict):
    import tensorflow as tf

    feature = {
        key: tf.train.Feature(int64_list=tf.train.Int64List(value=value.reshape(-1)))
        for key, value in chunk.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def prepare(cfg) -> dict:
    """Writes the prepared shards of an experiment (those not yet written).

    Returns:
        dict: shards, written (this call), kept (already there), examples (this call),
        seconds, directory.
    """
    import tensorflow as tf

    from kerastx.data import module as module_lib
    from kerastx.data import stream

    streamed_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stream="stream"))
    module = module_lib.build_data(streamed_cfg, use_prepared=False)
    expected = expected_manifest(cfg, module)
    stored = read_manifest(cfg.run_dir)
    done: set[int] = set()
    if stored is not None:
        why = difference(stored, expected)
        if why:
            where = os.path.join(cfg.run_dir, PREPARED_DIR)
            raise DataError(
                f"{where}: prepared from other data ({why}); delete it to prepare again"
            )
        done = set(stored.get("done", []))
    os.makedirs(os.path.join(cfg.run_dir, PREPARED_DIR), exist_ok=True)
    graph = stream.Stream(
        streamed_cfg, module, module.stream_shards, module.task.layout, module.task.fields
    )
    keys = graph.prepared_keys()
    t0 = time.monotonic()
    total = len(module.stream_shards)
    examples = written = 0
    tty = sys.stderr.isatty()
    for index in range(total):
        if index in done:
            continue
        final = shard_path(cfg.run_dir, index)
        tmp = f"{final}.tmp-{os.getpid()}"
        count = 0
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for chunk in graph.prepare_chunks(index):
                    arrays = {k: chunk[k].numpy() for k in keys}
                    writer.write(_example(arrays).SerializeToString())
                    count += len(arrays["example_id"])
        except tf.errors.InvalidArgumentError as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            problem = graph.error_from(err)
            if problem is None:
                raise
            raise problem from None
        os.replace(tmp, final)
        done.add(index)
        write_manifest(cfg.run_dir, {**expected, "done": sorted(done)})
        examples += count
        written += 1
        line = (
            f"prepared shard {index + 1}/{total} ({count} examples, {len(done)}/{total} "
            f"done, {time.monotonic() - t0:.0f} s)"
        )
        if tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        else:
            logger.info("%s", line)
    if tty and written:
        sys.stderr.write("\n")
    write_manifest(cfg.run_dir, {**expected, "done": sorted(done)})
    return {
        "shards": total,
        "written": written,
        "kept": total - written,
        "examples": examples,
        "seconds": time.monotonic() - t0,
        "directory": os.path.join(cfg.run_dir, PREPARED_DIR),
    }


def run_prepare(cfg) -> int:
    """`kerastx prepare EXP`: prepares the shards and prints what it did."""
    from kerastx.config.rundir import check_run_dir

    check_run_dir(cfg.run_dir)
    out = prepare(cfg)
    print(
        f"{out['directory']}: {out['shards']} shards ({out['written']} written, "
        f"{out['kept']} already there), {out['examples']} examples in {out['seconds']:.1f} s"
    )
    return 0
