"""The files of streamed training corpora, the vocabulary sample, and the path choice.

`shards(cfg, fields)` lists and checks every training file without reading it (exists,
not empty, gzip or not, TSV header, first TFRecord record); `sample(...)` reads a
bounded sample for the vocabularies (the first lines of every file, so every shard is
represented); `choose(cfg)` says whether the experiment streams its training corpora or
reads them into memory, and why.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import sys
import time

from kerastx.data import recipes, sources, textio
from kerastx.data.errors import DataError

logger = logging.getLogger("kerastx.data")

FILE_STRIDE = 2**32
CORPUS_STRIDE = 2**48
STREAM_TYPES = ("parallel", "cmudict", "text", "labelled", "tsv", "tfrecord")
# data.stream: auto streams training corpora whose files on disk exceed this size.
# Measured (`make bench --only stream`, bench_g2p model, 2 cores): 1M generated pairs,
# 44 MB of gzip on disk, reach the first step in 34.5 s streamed, 39.7 s in memory; the
# in-memory path reads and tokenizes everything first, so its start grows with the
# corpus and the streamed one's does not (36.3 s at 20M pairs).
AUTO_STREAM_BYTES = 32 * 2**20


@dataclasses.dataclass
class Shard:
    """One file (or a source/target pair) of a streamed corpus.

    Attributes:
        corpus: int. Index of its corpus in `data.train`.
        kind: str. The corpus type.
        number: int. Its position among its corpus's files (goes into example ids).
        paths: tuple of str. (path,) or (source, target).
        compression: str. "GZIP" or "".
        first_line: int. Line number of the first data line (2 for TSV, after the header).
        columns: dict or None. TSV: field -> column index, and "fields": the count.
    """

    corpus: int
    number: int
    kind: str
    paths: tuple[str, ...]
    compression: str
    first_line: int = 1
    columns: dict | None = None


def _compression(path: str) -> str:
    head = textio.read_bytes_head(path)
    return "GZIP" if head.startswith(textio.GZIP_MAGIC) else ""


def _first_line(path: str) -> str:
    opener = gzip.open if _compression(path) else open
    with opener(path, "rb") as f:
        raw = f.readline()
    text, _ = textio.decode(raw.rstrip(b"\n"), path, "error")
    return text.lstrip("\ufeff").rstrip("\r")


def corpus_paths(corpus, data_cfg) -> tuple[str | None, str | None]:
    """(source or path, target) of a corpus whose files can be streamed."""
    if corpus.type == "cmudict":
        paths = recipes.prepare_cmudict(data_cfg.data_dir, corpus.keep_stress)
        return paths[corpus.split]
    if corpus.type == "parallel":
        return corpus.source, corpus.target
    corpus = recipes.resolve(corpus, data_cfg)
    return corpus.path, None


def shards(cfg, fields: tuple[str, ...]) -> list[Shard]:
    """The files of every training corpus, checked enough to start (cheap: no reading).

    Raises:
        DataError: a missing or empty file, a glob matching nothing, parallel globs of
            different lengths, a corpus type that cannot be streamed, a TSV header
            without a needed column.
    """
    out: list[Shard] = []
    kinds = {reader_kind(c.type) for c in cfg.data.train}
    if len(kinds) > 1:
        raise DataError(
            "data.train: streamed corpora must all be read the same way (parallel or "
            f"cmudict, text, labelled, tsv, tfrecord); these mix {', '.join(sorted(kinds))}; "
            "set data.stream: memory"
        )
    columns = {
        tuple(sorted(wanted_columns(c, fields).items()))
        for c in cfg.data.train
        if c.type == "tfrecord"
    }
    if len(columns) > 1:
        raise DataError("data.train: streamed TFRecord corpora must name the same feature columns")
    for index, corpus in enumerate(cfg.data.train):
        where = f"data.train[{index}]"
        if corpus.weight != 1.0 and len(cfg.data.train) > 1:
            raise DataError(
                f"{where}.weight: {corpus.weight}: streamed corpora are each read in full "
                f"once an epoch, so weights other than 1 are not applied; set data.stream: "
                f"memory to mix corpora by weight"
            )
        if corpus.type in recipes.RESOLVED_AS:
            raise DataError(
                f"{where}: recipe corpus type '{corpus.type}' is read in memory (its files "
                f"are small); set data.stream: memory (or auto)"
            )
        if corpus.type not in STREAM_TYPES:
            raise DataError(
                f"{where}: corpus type '{corpus.type}' is generated in memory and cannot be "
                f"streamed; set data.stream: memory (or auto)"
            )
        first, second = corpus_paths(corpus, cfg.data)
        sources = textio.expand(first)
        targets = None
        if corpus.type in ("parallel", "cmudict") and "target" in fields:
            targets = textio.expand(second)
            if len(targets) != len(sources):
                raise DataError(
                    f"{where}: source {first} names {len(sources)} files but target "
                    f"{second} names {len(targets)}; parallel shards pair up in sorted order"
                )
        for number, path in enumerate(sources):
            paths = (path,) if targets is None else (path, targets[number])
            for p in paths:
                textio.read_bytes_head(p)  # missing, a directory, empty
            shard = Shard(index, number, corpus.type, paths, _compression(path))
            if targets is not None and _compression(targets[number]) != shard.compression:
                raise DataError(
                    f"{targets[number]}: compressed differently from {path}; a parallel "
                    f"pair must both be gzip or both plain text"
                )
            if corpus.type == "tsv":
                shard.first_line = 2
                shard.columns = _tsv_columns(path, corpus, fields)
            if corpus.type == "tfrecord":
                shard.columns = _tfrecord_columns(path, corpus, fields)
            out.append(shard)
    return out


def reader_kind(kind: str) -> str:
    return "parallel" if kind == "cmudict" else kind


wanted_columns = sources.corpus_columns


def _tsv_columns(path: str, corpus, fields) -> dict:
    header = _first_line(path).split("\t")
    out = {"fields": len(header)}
    for key, name in wanted_columns(corpus, fields).items():
        if name not in header:
            raise DataError(
                f"{path}:1: no column '{name}' in the header (columns: {', '.join(header)})"
            )
        out[key] = header.index(name)
    return out


def _tfrecord_columns(path: str, corpus, fields) -> dict:
    """Feature names per field; the first record must hold each as one bytes value."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(path, compression_type=_compression(path))
    try:
        first = next(iter(records.take(1).as_numpy_iterator()), None)
    except tf.errors.OpError as err:
        message = err.message.splitlines()[0] if err.message else type(err).__name__
        raise DataError(f"{path}: not a readable TFRecord file ({message})") from None
    if first is None:
        raise DataError(f"{path}: holds no record")
    features = tf.train.Example.FromString(first).features.feature
    out = {}
    for key, name in wanted_columns(corpus, fields).items():
        where = f"{path}: record 0"
        if name not in features:
            raise DataError(
                f"{where}: no feature '{name}' (features: {', '.join(sorted(features))})"
            )
        kind = features[name].WhichOneof("kind")
        if kind != "bytes_list":
            raise DataError(
                f"{where}: feature '{name}' is {kind}; streamed TFRecord features must be "
                f"bytes (strings); set data.stream: memory to read int64 labels"
            )
        sources._feature_text(features[name], name, key, where, "replace")
        out[key] = name
    return out


def describe(shard_list: list[Shard]) -> str:
    """`N files, M MB` of the streamed corpora (for the start-up line)."""
    size = sum(os.path.getsize(p) for s in shard_list for p in s.paths)
    files = sum(len(s.paths) for s in shard_list)
    return f"{files} files, {size / 1e6:.0f} MB on disk"


def total_bytes(cfg) -> tuple[int, int]:
    """(bytes, files) of the training corpora's files as named in the config."""
    size = files = 0
    for corpus in cfg.data.train:
        if corpus.type not in STREAM_TYPES or corpus.type == "cmudict":
            continue
        for pattern in corpus_paths(corpus, cfg.data):
            if pattern is None:
                continue
            try:
                paths = textio.expand(pattern)
            except DataError:  # no file matches: listed (and refused) when streaming
                continue
            for path in paths:
                if os.path.isfile(path):
                    size += os.path.getsize(path)
                    files += 1
    return size, files


def choose(cfg) -> tuple[bool, str]:
    """(streamed, why): how the training corpora are read, and the reason, for the log.

    `data.stream: stream` / `memory` decide; `auto` streams when the training files on
    disk exceed `AUTO_STREAM_BYTES` (the in-memory path reads and tokenizes every line
    before the first step, and holds the corpus in RAM: fine for small corpora, where
    its exact per-epoch plan is cheap) and every corpus can be streamed.
    """
    mode = cfg.data.stream
    if mode != "auto":
        return mode == "stream", f"data.stream: {mode}"
    if cfg.data.service:
        return True, "data.stream: auto; data.service feeds streamed corpora"
    recipe = sorted({c.type for c in cfg.data.train if c.type in recipes.RESOLVED_AS})
    if recipe:
        return False, f"data.stream: auto; recipe corpora ({', '.join(recipe)}) are read in memory"
    if any(c.type not in STREAM_TYPES for c in cfg.data.train):
        return False, "data.stream: auto; a generated (synthetic) corpus is read in memory"
    size, files = total_bytes(cfg)
    limit = AUTO_STREAM_BYTES // 2**20
    if not files:
        if any(c.type == "cmudict" for c in cfg.data.train):
            return False, "data.stream: auto; recipe corpora (cmudict) are read in memory"
        return False, "data.stream: auto; no training file found to measure"
    if size > AUTO_STREAM_BYTES:
        return True, f"data.stream: auto; {files} files, {size / 2**20:.0f} MiB > {limit} MiB"
    return False, f"data.stream: auto; {files} files, {size / 2**20:.1f} MiB <= {limit} MiB"


def _head_lines(path: str, count: int, policy: str, skip: int = 0) -> list[str]:
    """The first `count` lines of a (gzip or plain) text file after `skip` lines."""
    opener = gzip.open if _compression(path) else open
    raw = []
    with opener(path, "rb") as f:
        for number, line in enumerate(f):
            if number < skip:
                continue
            if len(raw) >= count:
                break
            raw.append(line)
    data = b"".join(raw)
    if not data:
        return []
    text, _ = textio.decode(data, path, policy)
    return textio.split_lines(text) if skip == 0 else textio.split_lines("\n" + text)[1:]


def _head_records(path: str, count: int, corpus, fields, policy: str) -> dict:
    import tensorflow as tf

    columns = wanted_columns(corpus, fields)
    out = {key: [] for key in columns}
    records = tf.data.TFRecordDataset(path, compression_type=_compression(path)).take(count)
    for i, raw in enumerate(records.as_numpy_iterator()):
        features = tf.train.Example.FromString(raw).features.feature
        for key, name in columns.items():
            where = f"{path}: record {i}"
            if name not in features:
                raise DataError(f"{where}: no feature '{name}'")
            out[key].append(sources._feature_text(features[name], name, key, where, policy)[0])
    return out


def sample(cfg, fields: tuple[str, ...], shard_list: list[Shard]) -> list[sources.RawCorpus]:
    """A bounded sample of the streamed training corpora, to build vocabularies from.

    The first `ceil(data.vocab_sample / files)` examples of every file (every shard is
    represented; no file is read to its end), one RawCorpus per training corpus.
    Progress goes to stderr (a line that updates on a terminal).
    """
    limit = cfg.data.vocab_sample
    per = max(1, math.ceil(limit / len(shard_list)))
    policy = cfg.data.invalid_utf8
    parts: dict[int, dict[str, list]] = {}
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    taken = 0
    for done, shard in enumerate(shard_list, start=1):
        corpus = cfg.data.train[shard.corpus]
        out = parts.setdefault(shard.corpus, {})
        if shard.kind == "tfrecord":
            got = _head_records(shard.paths[0], per, corpus, fields, policy)
        elif shard.kind == "tsv":
            rows = _head_lines(shard.paths[0], per, policy, skip=1)
            got = {k: [] for k in shard.columns if k != "fields"}
            for row in rows:
                values = row.split("\t")
                for key in got:
                    got[key].append(
                        values[shard.columns[key]] if len(values) > shard.columns[key] else ""
                    )
        elif shard.kind == "labelled":
            rows = _head_lines(shard.paths[0], per, policy)
            got = {"label": [], "source": []}
            for row in rows:
                tag, _, text = row.partition("\t")
                got["label"].append(tag)
                got["source"].append(text)
        else:
            got = {"source": _head_lines(shard.paths[0], per, policy)}
            if len(shard.paths) > 1:
                got["target"] = _head_lines(shard.paths[1], per, policy)
                n = min(len(got["source"]), len(got["target"]))
                got = {k: v[:n] for k, v in got.items()}
        for key, values in got.items():
            out.setdefault(key, []).extend(values)
        taken += len(got["source"])
        if tty:
            sys.stderr.write(
                f"\rvocabulary sample: {taken} examples from {done}/{len(shard_list)} files"
            )
            sys.stderr.flush()
    if tty:
        sys.stderr.write("\n")
    logger.info(
        "vocabulary sample: %d examples, the first %d of each of %d files (data.vocab_sample="
        "%d), %.1f s",
        taken,
        per,
        len(shard_list),
        limit,
        time.monotonic() - t0,
    )
    corpora = []
    for index, got in sorted(parts.items()):
        corpora.append(
            sources.RawCorpus(
                f"train[{index}] sample",
                got["source"],
                lambda i: f"vocabulary sample: example {i}",
                target=got.get("target"),
                label=got.get("label"),
                condition=got.get("condition"),
            )
        )
    return corpora
