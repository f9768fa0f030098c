"""Streamed training corpora: read, checked, tokenized and batched inside tf.data.

The in-memory path (`sources` -> `encode` -> `batching.Planner`) reads every corpus into
Python first; its start time and memory grow with the corpus. This path never holds a
corpus: each epoch is a tf.data graph over the corpus files, and memory is bounded by
the shuffle window, the chunk size and the prefetch depth.

One epoch of one input pipeline:
1. Files: every training corpus's files (a path or a glob; parallel corpora pair the
   sorted source and target files) in one list, permuted with a seed from (seed,
   epoch). With P input pipelines (workers) and at least P files, pipeline p reads the
   permuted files p, p+P, ...; with fewer files, every pipeline reads every file and
   keeps the lines i with i % P == p. Together the pipelines read the epoch exactly.
2. Lines: `interleave` over the files (`TextLineDataset` / `TFRecordDataset`, gzip
   known by the first bytes), deterministic, each line with its file and line number.
   A parallel pair is zipped with an end marker on both sides, so a file that ends
   before the other one is an error, never a silent truncation.
3. Windows of `data.shuffle_buffer` lines (whole chunks of `CHUNK` lines), checked and
   tokenized in one vectorized call (`_process`): NUL bytes, invalid UTF-8 (error, or
   replaced and counted), empty sides (`data.empty_examples`), the length policy
   (drop / truncate / error, lengths as the model sees them, see
   `kerastx.data.encode`), labels and condition tags looked up in their vocabularies.
   A problem is an assertion whose message carries `ERROR_MARK`, the kind, the file and
   the line; `error_from` turns it into the same one-line `DataError` the in-memory
   path gives.
4. A scan over the windows (`_window_step`): the kept examples of the window and those
   carried from the last one are permuted (seed from (seed, epoch, window)), sorted into
   the length buckets of `kerastx.data.batching`, cut into full token-budget batches
   (the rest carried on), and the batches' order permuted; the empty window that ends
   the epoch flushes every partial batch. Every batch is padded to its bucket boundary;
   batches are numbered (epoch, index).
5. Counts (examples read, dropped, empty, truncated, replaced): a window's counts go on
   its last batch; a window that completes no batch passes them on, and the batch held
   back at the epoch's end takes what is left, so the counts summed over an epoch's
   batches are exactly the epoch's counts.

Exact resume keeps TensorFlow's iterator checkpoint of this dataset (see
docs/architecture.md, "The data stream and exact resume", for why).

Example ids: `corpus * 2**48 + file * 2**32 + line` (0-based line within the file, data
lines only), so a one-file corpus has the ids of the in-memory path.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

from kerastx.data import batching, textio
from kerastx.data.errors import DataError
from kerastx.data.pipeline import frame_fields
from kerastx.data.shards import CORPUS_STRIDE, FILE_STRIDE, Shard, reader_kind, wanted_columns

CHUNK = 1024  # lines checked and tokenized per vectorized call
CYCLE = 8  # files read at once by the interleave
ERROR_MARK = "kerastx-stream-error"
# Counts carried per example and summed per batch, in this order.
COUNT_KEYS = ("read", "dropped", "empty", "truncated", "replaced")
_FOREVER = 2**62
# The assertion's data as tf.data prints it ("[mark kind] [file] [line] [value]"; eager
# code prints them one a line).
_ERROR_RE = re.compile(ERROR_MARK + r" ([\w-]+)'?\]?\s*\[?(\d+)\]?\s*\[?(\d+)\]?\s*\[?(-?\d+)")


# -- the tf.data graph ---------------------------------------------------------------


def _assert(ok, kind: str, file_id, line, value) -> tf.Operation:
    """An assertion whose failure `error_from` reads (kind, file id, line, value)."""
    return tf.debugging.Assert(
        ok,
        [
            tf.constant(f"{ERROR_MARK} {kind}"),
            tf.cast(file_id, tf.int64),
            tf.cast(line, tf.int64),
            tf.cast(value, tf.int64),
        ],
        summarize=1,
    )


def _first_bad(bad, chunk, value=None):
    """(ok, file id, line, value) of the first True of `bad` in a chunk."""
    i = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
    v = tf.constant(0, tf.int64) if value is None else tf.gather(value, i)
    return tf.logical_not(tf.reduce_any(bad)), chunk["file"][i], chunk["line"][i], v


class Stream:
    """Builds the streamed epochs of an experiment's training corpora.

    Args:
        cfg: ExperimentConfig.
        module: DataModule (tokenizers, labels, conditions, boundaries).
        shard_list: list of Shard (see `shards`).
        layout: dict. The family's batch layout (`Task.layout`).
        fields: tuple of str. The family's fields.
        prepared: list of str or None. One TFRecord file per shard written by
            `kerastx prepare` (token ids of every line): read instead of the text.
    """

    def __init__(self, cfg, module, shard_list: list[Shard], layout: dict, fields, prepared=None):
        self.cfg = cfg
        self.prepared = prepared
        self.module = module
        self.shards = shard_list
        self.layout = layout
        self.fields = fields
        self._tables = {}
        for key, vocabulary in (("label", module.labels), ("condition", module.conditions)):
            if vocabulary is not None:
                tags = tf.constant(vocabulary.tags)
                ids = tf.range(len(vocabulary.tags), dtype=tf.int64)
                init = tf.lookup.KeyValueTensorInitializer(tags, ids)
                self._tables[key] = tf.lookup.StaticHashTable(init, -1)

    # -- reading ---------------------------------------------------------------------

    def _reader(self, pipes: int, pipe: int):
        """The function file id -> dataset of the lines (records) of that shard."""
        kind = reader_kind(self.shards[0].kind)
        n = len(self.shards)
        first = tf.constant([s.paths[0] for s in self.shards])
        second = tf.constant([s.paths[-1] for s in self.shards])
        compression = tf.constant([s.compression for s in self.shards])
        first_line = tf.constant([s.first_line for s in self.shards], tf.int64)
        corpus = tf.constant([s.corpus for s in self.shards], tf.int64)
        number = tf.constant([s.number for s in self.shards], tf.int64)
        paired = "target" in self.fields and kind == "parallel"
        line_shard = n < pipes  # fewer files than pipelines: split the lines

        def numbered(file_id, chunks):
            """Adds file, line and example_id to chunks of one file, in file order."""
            base = corpus[file_id] * CORPUS_STRIDE + number[file_id] * FILE_STRIDE

            def add(k, rec):
                size = tf.shape(next(iter(rec.values())), out_type=tf.int64)[0]
                index = k * CHUNK + tf.range(size, dtype=tf.int64)
                if line_shard:
                    index = index * pipes + pipe
                return {
                    "file": tf.fill([size], tf.cast(file_id, tf.int64)),
                    "line": index + first_line[file_id],
                    "example_id": base + index,
                    **rec,
                }

            return chunks.enumerate().map(add)

        def lines_of(path, comp, skip: int = 0):
            lines = tf.data.TextLineDataset(path, compression_type=comp)
            if skip:
                lines = lines.skip(skip)
            if line_shard:
                lines = lines.shard(pipes, pipe)
            return lines.batch(CHUNK)

        if self.prepared is not None:
            prepared = tf.constant(self.prepared)

            def read_prepared(file_id):
                records = tf.data.TFRecordDataset(prepared[file_id])
                if line_shard:  # a record is a chunk of lines: still disjoint and whole
                    records = records.shard(pipes, pipe)
                return records.map(self._parse_prepared)

            return read_prepared

        def read(file_id):
            comp = compression[file_id]
            if kind == "tfrecord":
                records = tf.data.TFRecordDataset(first[file_id], compression_type=comp)
                if line_shard:
                    records = records.shard(pipes, pipe)
                return numbered(file_id, records.batch(CHUNK).map(self._parse_records))
            if kind in ("tsv", "labelled"):
                skip = 1 if kind == "tsv" else 0
                src = lines_of(first[file_id], comp, skip)
                return numbered(file_id, src.map(lambda b: {"line_text": b}))
            if not paired:
                return numbered(
                    file_id, lines_of(first[file_id], comp).map(lambda b: {"source": b})
                )
            # Both sides in chunks with an end marker: a file that ends first shows as a
            # chunk of another size, or as its marker against the other's chunk.
            end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(False)))
            a = lines_of(first[file_id], comp).map(lambda b: (b, tf.constant(True)))
            b = lines_of(second[file_id], comp).map(lambda b: (b, tf.constant(True)))
            pairs = tf.data.Dataset.zip((a.concatenate(end), b.concatenate(end)))

            def aligned(k, pair):
                (s, has_s), (t, has_t) = pair
                same = tf.equal(has_s, has_t) & tf.equal(tf.size(s), tf.size(t))
                line = k * CHUNK + tf.cast(tf.minimum(tf.size(s), tf.size(t)), tf.int64) + 1
                with tf.control_dependencies([_assert(same, "count", file_id, line, 0)]):
                    return tf.identity(has_s)

            pairs = pairs.enumerate().filter(aligned)
            pairs = pairs.map(lambda k, p: {"source": p[0][0], "target": p[1][0]})
            return numbered(file_id, pairs)

        return read

    def prepared_keys(self) -> list[str]:
        """The features of a prepared record (one chunk of lines)."""
        keys = ["file", "line", "example_id", "replaced", "source/values", "source/lengths"]
        if "target" in self.fields and self.module.target_tokenizer is not None:
            keys += ["target/values", "target/lengths"]
        if "label" in self.fields and self.module.labels is not None:
            keys.append("label")
        if self.module.conditions is not None:
            keys.append("condition")
        return keys

    def _parse_prepared(self, raw):
        spec = {key: tf.io.RaggedFeature(tf.int64) for key in self.prepared_keys()}
        return tf.io.parse_single_example(raw, spec)

    def prepare_chunks(self, file_id: int) -> tf.data.Dataset:
        """The chunks of one shard, checked and tokenized: what `kerastx prepare` writes."""
        read = self._reader(1, 0)

        def tokenize(chunk):
            deps: list = []
            tokens = self._tokenized(chunk, deps)
            out = {k: chunk[k] for k in ("file", "line", "example_id")}
            for key, value in tokens.items():
                if isinstance(value, tf.RaggedTensor):
                    out[key + "/values"] = tf.cast(value.flat_values, tf.int64)
                    out[key + "/lengths"] = value.row_lengths()
                else:
                    out[key] = tf.cast(value, tf.int64)
            with tf.control_dependencies(deps):
                return {k: tf.identity(v) for k, v in out.items()}

        calls = tf.data.AUTOTUNE
        return (
            read(tf.constant(file_id, tf.int64))
            .map(tokenize, num_parallel_calls=calls, deterministic=True)
            .prefetch(2)
        )

    def _parse_records(self, raw):
        """A chunk of serialized tf.Examples -> the needed fields and a missing flag."""
        corpus = self.cfg.data.train[self.shards[0].corpus]
        names = wanted_columns(corpus, self.fields)
        missing = "\0kerastx-missing"
        spec = {
            name: tf.io.FixedLenFeature([], tf.string, default_value=missing)
            for name in names.values()
        }
        parsed = tf.io.parse_example(raw, spec)
        out = {key: parsed[name] for key, name in names.items()}
        flags = tf.stack([tf.equal(v, missing) for v in out.values()], axis=1)
        out["missing"] = tf.reduce_any(flags, axis=1)
        return out

    # -- checking and tokenizing one chunk -------------------------------------------

    def _tsv_fields(self, chunk):
        """Splits TSV (or labelled) lines into the needed fields, per file's columns."""
        kind = self.shards[0].kind
        lines = chunk.pop("line_text")
        if kind == "labelled":
            parts = tf.strings.split(lines, "\t", maxsplit=1)
            count = parts.row_lengths()
            ok, f, ln, v = _first_bad(count < 2, chunk)
            deps = [_assert(ok, "tab", f, ln, 0)]
            padded = parts.to_tensor("", shape=[None, 2])
            ok, f, ln, v = _first_bad(tf.equal(padded[:, 0], "") & (count == 2), chunk)
            deps.append(_assert(ok, "label-empty", f, ln, 0))
            with tf.control_dependencies(deps):
                chunk["label"] = tf.identity(padded[:, 0])
                chunk["source"] = padded[:, 1]
            return chunk
        parts = tf.strings.split(lines, "\t")
        count = parts.row_lengths()
        cols = [s.columns for s in self.shards]
        expect = tf.constant([c["fields"] for c in cols], tf.int64)
        want = tf.gather(expect, chunk["file"])
        ok, f, ln, v = _first_bad(tf.not_equal(count, want), chunk, count)
        with tf.control_dependencies([_assert(ok, "fields", f, ln, v)]):
            padded = parts.to_tensor("")
        keys = [k for k in cols[0] if k != "fields"]
        for key in keys:
            index = tf.constant([c[key] for c in cols], tf.int64)
            col = tf.gather(index, chunk["file"])
            chunk[key] = tf.gather(padded, col, batch_dims=1)
        return chunk

    def _text_checks(self, chunk, key: str, deps: list):
        """NUL bytes and UTF-8 of one side; returns (text, replaced flags)."""
        text = chunk[key]
        text = tf.where(
            tf.equal(chunk["line"], 1), tf.strings.regex_replace(text, "^\ufeff", ""), text
        )
        text = tf.strings.regex_replace(text, "\r$", "")
        nul = tf.strings.regex_full_match(text, "(?s).*\\x00.*")
        ok, f, ln, v = _first_bad(nul, chunk)
        deps.append(_assert(ok, f"nul-{key}", f, ln, 0))
        fixed = tf.strings.unicode_transcode(
            text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        bad = tf.not_equal(fixed, text)
        if self.cfg.data.invalid_utf8 == "error":
            ok, f, ln, v = _first_bad(bad, chunk)
            deps.append(_assert(ok, f"utf8-{key}", f, ln, 0))
            return text, tf.zeros_like(bad, tf.int64)
        return fixed, tf.cast(bad, tf.int64)

    def _tag_ids(self, chunk, key: str, deps: list):
        ids = self._tables[key].lookup(chunk[key])
        ok, f, ln, v = _first_bad(ids < 0, chunk)
        deps.append(_assert(ok, key, f, ln, 0))
        return tf.cast(ids, tf.int32)

    def _tokenized(self, chunk, deps: list) -> dict:
        """A chunk of lines -> checked token ids (and tag ids) of every line.

        Returns:
            dict: "source" (and "target") ragged int32 tokens, "label"/"condition"
            int32 ids where read, "replaced" int64 flags.
        """
        m = self.module
        if "line_text" in chunk:
            chunk = self._tsv_fields(chunk)
        if "missing" in chunk:
            ok, f, ln, v = _first_bad(chunk.pop("missing"), chunk)
            deps.append(_assert(ok, "feature", f, ln, 0))
        out = {}
        src_text, replaced = self._text_checks(chunk, "source", deps)
        with tf.control_dependencies(deps):
            out["source"] = m.source_tokenizer.tokenize(src_text)
        if "target" in chunk and m.target_tokenizer is not None and "target" in self.fields:
            tgt_text, rep = self._text_checks(chunk, "target", deps)
            replaced = tf.maximum(replaced, rep)
            with tf.control_dependencies(deps):
                out["target"] = m.target_tokenizer.tokenize(tgt_text)
        if "label" in chunk and m.labels is not None:
            out["label"] = self._tag_ids(chunk, "label", deps)
        if "condition" in chunk and m.conditions is not None:
            out["condition"] = self._tag_ids(chunk, "condition", deps)
        out["replaced"] = replaced
        return out

    def _process(self, chunk):
        """A chunk of lines (or prepared records) -> examples with kept flags and counts."""
        deps: list = []
        if self.prepared is not None:
            tokens = _from_prepared(chunk)
        else:
            tokens = self._tokenized(chunk, deps)
        return self._policy(chunk, tokens, deps)

    def _policy(self, chunk, tokens: dict, deps: list) -> dict:
        """Empty examples and the length policy, applied and counted (see `encode`)."""
        d = self.cfg.data
        src = tokens["source"]
        tgt = tokens.get("target")
        out = {"example_id": chunk["example_id"]}
        src_len = src.row_lengths()
        empty = tf.equal(src_len, 0)
        max_src, max_tgt = d.max_source_length, d.max_target_length
        src_over = src_len + 1 > max_src
        if tgt is not None:
            tgt_len = tgt.row_lengths()
            tgt_empty = tf.equal(tgt_len, 0)
            tgt_over = (tgt_len + 1 > max_tgt) & ~empty & ~tgt_empty
            if d.empty_examples == "error":
                ok, f, ln, v = _first_bad(tgt_empty & ~empty, chunk)
                deps.append(_assert(ok, "empty-target", f, ln, 0))
            empty = empty | tgt_empty
        else:
            tgt_over = tf.zeros_like(empty)
        src_over = src_over & ~empty
        if d.empty_examples == "error":
            ok, f, ln, v = _first_bad(tf.equal(src_len, 0), chunk)
            deps.append(_assert(ok, "empty-source", f, ln, 0))
        if d.length_policy == "error":
            ok, f, ln, v = _first_bad(src_over, chunk, src_len + 1)
            deps.append(_assert(ok, "long-source", f, ln, v))
            if tgt is not None:
                ok, f, ln, v = _first_bad(tgt_over, chunk, tgt.row_lengths() + 1)
                deps.append(_assert(ok, "long-target", f, ln, v))
        over = src_over | tgt_over
        drop = over if d.length_policy == "drop" else tf.zeros_like(over)
        kept = ~empty & ~drop
        truncated = over & ~drop & ~empty
        for key in ("label", "condition"):
            if key in tokens:
                out[key] = tokens[key]
        with tf.control_dependencies(deps):
            out["source"] = src[:, : max_src - 1]
            if tgt is not None:
                out["target"] = tgt[:, : max_tgt - 1]
        i64 = tf.int64
        out["counts"] = tf.stack(
            [
                tf.ones_like(chunk["line"]),
                tf.cast(drop & ~empty, i64),
                tf.cast(empty, i64),
                tf.cast(truncated, i64),
                tokens["replaced"],
            ],
            axis=1,
        )
        out["kept"] = kept
        return out

    # -- windows -> batches (vectorized; see step 5 of the module docstring) ----------

    def _window_step(self, state, window):
        """Scan step: one window of checked lines -> the batches it completes.

        State: `pending` counts not yet on a batch, `left` the examples of unfilled
        batches (carried into the next window), `held` the last batch made (emitted with
        the next window, so that the end of the epoch can add what is pending to it),
        and `t` the window number. The empty window that ends the epoch flushes every
        unfilled batch.
        """
        pending, left, held, t = state
        d = self.cfg.data
        is_end = tf.equal(tf.shape(window["kept"])[0], 0)
        counts = tf.reduce_sum(window["counts"], axis=0) + pending
        rows = tf.where(window["kept"])[:, 0]
        fields = {k: v for k, v in window.items() if k not in ("kept", "counts")}
        ex = _concat_rows(left, _take_rows(fields, rows))
        n = _num_rows(ex)
        if d.shuffle_buffer:
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(n), seed=tf.stack([self._epoch_seed, t])
            )
            ex = _take_rows(ex, perm)
        length = ex["source" + _LENGTHS] + 1
        if "target" + _LENGTHS in ex:
            length = tf.maximum(length, ex["target" + _LENGTHS] + 1)
        nb = len(self.module.boundaries)
        bucket = tf.searchsorted(self._bounds, length, side="left", out_type=tf.int64)
        bucket = tf.minimum(bucket, nb - 1)
        order = tf.argsort(bucket, stable=True)
        bucket = tf.gather(bucket, order)
        per_bucket = tf.math.bincount(bucket, minlength=nb, maxlength=nb, dtype=tf.int64)
        starts = tf.cumsum(per_bucket, exclusive=True)
        pos = tf.range(n, dtype=tf.int64) - tf.gather(starts, bucket)
        cap = tf.gather(self._caps, bucket)
        full = per_bucket // self._caps * self._caps
        limit = tf.where(is_end, per_bucket, full)
        in_batch = pos < tf.gather(limit, bucket)
        left = _take_rows(ex, tf.boolean_mask(order, ~in_batch))
        chosen = tf.boolean_mask(order, in_batch)
        # Batch sizes in sorted order: per bucket its full batches, then (at the end)
        # the partial one.
        b_sorted = tf.boolean_mask(bucket, in_batch)
        p_sorted = tf.boolean_mask(pos, in_batch)
        c_sorted = tf.boolean_mask(cap, in_batch)
        batch_of = tf.boolean_mask(tf.gather(starts, bucket), in_batch) + p_sorted // c_sorted
        # Batch ids (unique per bucket and batch number), consecutive in sorted order.
        # (Compared with the previous id, -1 before the first: no row, no batch.)
        is_first = batch_of != tf.concat([[-1], batch_of], axis=0)[:-1]
        batch_index = tf.cumsum(tf.cast(is_first, tf.int64)) - 1
        num_batches = tf.reduce_sum(tf.cast(is_first, tf.int64))
        sizes = tf.math.bincount(batch_index, minlength=num_batches, dtype=tf.int64)
        keys = tf.boolean_mask(b_sorted, is_first)
        made = {"rows": _take_rows(ex, chosen), "sizes": sizes, "keys": keys}
        if d.shuffle_buffer:
            made = _permute_batches(
                made,
                tf.random.experimental.stateless_shuffle(
                    tf.range(num_batches), seed=tf.stack([self._epoch_seed + 1, t])
                ),
            )
        made["counts"] = tf.zeros([num_batches, len(COUNT_KEYS)], tf.int64)
        has_made = num_batches > 0
        has_held = tf.shape(held["sizes"])[0] > 0
        # Counts of the window (and earlier pending ones) go on its last batch; with
        # no batch made they wait, and at the end they go on the held batch.
        made["counts"] = made["counts"] + _last_row(num_batches)[:, None] * counts[None, :]
        held_counts = (
            held["counts"]
            + tf.cast(is_end & ~has_made, tf.int64)
            * _last_row(tf.shape(held["sizes"], out_type=tf.int64)[0])[:, None]
            * counts[None, :]
        )
        held = {**held, "counts": held_counts}
        both = _concat_batches(held, made)
        total = tf.shape(both["sizes"], out_type=tf.int64)[0]
        keep_back = tf.where(is_end, tf.constant(0, tf.int64), tf.minimum(total, 1))
        emit, new_held = _split_batches(both, total - keep_back)
        next_pending = tf.where(has_made | is_end, tf.zeros_like(counts), counts)
        none_left = _assert(~is_end | has_made | has_held, "none-left", 0, 0, 0)
        with tf.control_dependencies([none_left]):
            t_next = t + 1
        return (next_pending, left, new_held, t_next), emit

    def epoch(self, epoch, pipes: int, pipe: int, capacities: np.ndarray) -> tf.data.Dataset:
        """The batches of one epoch of one pipeline: dicts with `epoch` and `index`."""
        d, seed = self.cfg.data, self.cfg.seed
        n = len(self.shards)
        epoch = tf.cast(epoch, tf.int64)
        self._epoch_seed = _mix(seed, epoch)
        self._bounds = tf.constant(self.module.boundaries, tf.int64)
        self._caps = tf.constant(capacities, tf.int64)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        if n >= pipes and pipes > 1:
            order = order[pipe::pipes]
        files = tf.data.Dataset.from_tensor_slices(order)
        raw = files.interleave(
            self._reader(pipes, pipe),
            cycle_length=min(CYCLE, n),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        size = d.shuffle_buffer or CHUNK * 8
        per_window = max(1, -(-size // CHUNK))
        windows = raw.ragged_batch(per_window).map(
            lambda w: {k: v.merge_dims(0, 1) for k, v in w.items()}
        )
        calls = 2 if d.num_parallel_calls == -1 else max(1, d.num_parallel_calls)
        windows = windows.map(
            lambda w: _split_ragged(self._process(w)), num_parallel_calls=calls, deterministic=True
        )
        spec = windows.element_spec
        empty = {k: tf.zeros([0, *s.shape[1:]], s.dtype) for k, s in spec.items()}
        windows = windows.concatenate(tf.data.Dataset.from_tensors(empty))
        rows0 = {k: v for k, v in empty.items() if k not in ("kept", "counts")}
        no_batch = {
            "rows": rows0,
            "sizes": tf.zeros([0], tf.int64),
            "keys": tf.zeros([0], tf.int64),
            "counts": tf.zeros([0, len(COUNT_KEYS)], tf.int64),
        }
        state0 = (tf.zeros([len(COUNT_KEYS)], tf.int64), rows0, no_batch, tf.constant(0, tf.int64))
        emitted = windows.scan(state0, self._window_step)
        batches = emitted.flat_map(_batch_slices)
        layout = self.layout
        bounds = self._bounds

        def frame(index, b):
            size = bounds[b["key"]]
            batch = frame_fields(b["rows"], layout, size, size)
            batch["counts"] = b["counts"]
            batch["epoch"] = epoch
            batch["index"] = index
            return batch

        return batches.enumerate().map(frame, num_parallel_calls=calls, deterministic=True)

    def dataset(self, start_epoch: int, pipes: int, pipe: int, capacities) -> tf.data.Dataset:
        """The infinite stream of one pipeline from `start_epoch` (see `epoch`)."""
        ds = tf.data.Dataset.range(start_epoch, _FOREVER).flat_map(
            lambda e: self.epoch(e, pipes, pipe, capacities)
        )
        options = tf.data.Options()
        options.deterministic = True
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        # The graph's only state outside the iterator is the tokenizers' and tag
        # vocabularies' lookup tables (fixed once built) and the checks' assertions;
        # the iterator checkpoint would refuse them ("is stateful") under the default.
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        return ds.prefetch(2).with_options(options)

    # -- errors ----------------------------------------------------------------------

    def error_from(self, err: BaseException) -> DataError | None:
        """The one-line DataError of a failed stream assertion (None: not one of ours)."""
        message = getattr(err, "message", None) or str(err)
        match = _ERROR_RE.search(message)
        if match is None:
            return None
        kind, file_id, line, value = match.group(1), *map(int, match.groups()[1:])
        return describe_error(self.cfg, self.shards[file_id], kind, line, value)


_VALUES, _LENGTHS = "/values", "/lengths"


def _split_ragged(chunk: dict) -> dict:
    """Ragged fields as two dense tensors each (`key/values`, `key/lengths`)."""
    out = {}
    for key, value in chunk.items():
        if isinstance(value, tf.RaggedTensor):
            out[key + _VALUES] = value.flat_values
            out[key + _LENGTHS] = value.row_lengths()
        else:
            out[key] = value
    return out


def _join_ragged(chunk: dict) -> dict:
    """The inverse of `_split_ragged`."""
    out = {}
    for key, value in chunk.items():
        if key.endswith(_LENGTHS):
            continue
        if key.endswith(_VALUES):
            name = key[: -len(_VALUES)]
            lengths = chunk[name + _LENGTHS]
            out[name] = tf.RaggedTensor.from_row_lengths(value, lengths, validate=False)
        else:
            out[key] = value
    return out


def _num_rows(rows: dict) -> tf.Tensor:
    return tf.shape(rows["example_id"])[0]


def _take_rows(rows: dict, index) -> dict:
    """The given rows of examples in split form (ragged fields as values + lengths)."""
    joined = _join_ragged(rows)
    return _split_ragged({k: tf.gather(v, index) for k, v in joined.items()})


def _concat_rows(a: dict, b: dict) -> dict:
    return {k: tf.concat([a[k], b[k]], axis=0) for k in a}


def _last_row(count) -> tf.Tensor:
    """`(count,)` int64 one-hot of the last position (all zeros when count is 0)."""
    count = tf.cast(count, tf.int32)
    return tf.one_hot(count - 1, count, dtype=tf.int64)


def _concat_batches(a: dict, b: dict) -> dict:
    return {
        "rows": _concat_rows(a["rows"], b["rows"]),
        **{k: tf.concat([a[k], b[k]], axis=0) for k in ("sizes", "keys", "counts")},
    }


def _split_batches(batches: dict, count) -> tuple[dict, dict]:
    """(the first `count` batches, the rest)."""
    rows = tf.reduce_sum(batches["sizes"][:count])
    n = _num_rows(batches["rows"])
    first = _take_rows(batches["rows"], tf.range(rows))
    rest = _take_rows(batches["rows"], tf.range(rows, tf.cast(n, tf.int64)))
    head = {"rows": first, **{k: batches[k][:count] for k in ("sizes", "keys", "counts")}}
    tail = {"rows": rest, **{k: batches[k][count:] for k in ("sizes", "keys", "counts")}}
    return head, tail


def _permute_batches(made: dict, perm) -> dict:
    """Reorders whole batches (their rows move together)."""
    starts = tf.cumsum(made["sizes"], exclusive=True)
    ranges = tf.ragged.range(tf.gather(starts, perm), tf.gather(starts + made["sizes"], perm))
    return {
        "rows": _take_rows(made["rows"], ranges.flat_values),
        "sizes": tf.gather(made["sizes"], perm),
        "keys": tf.gather(made["keys"], perm),
    }


def _batch_slices(emit: dict) -> tf.data.Dataset:
    """The batches a window emitted, one dataset element each."""
    sizes = emit["sizes"]
    rows = _join_ragged(emit["rows"])
    per_batch = {k: tf.RaggedTensor.from_row_lengths(v, sizes) for k, v in rows.items()}
    return tf.data.Dataset.from_tensor_slices(
        {"rows": per_batch, "key": emit["keys"], "counts": emit["counts"]}
    )


def _from_prepared(chunk: dict) -> dict:
    """The token dict of `Stream._tokenized` from a parsed prepared record."""
    out = {"replaced": chunk["replaced"]}
    for key in ("source", "target"):
        if key + "/values" in chunk:
            values = tf.cast(chunk[key + "/values"], tf.int32)
            out[key] = tf.RaggedTensor.from_row_lengths(
                values, chunk[key + "/lengths"], validate=False
            )
    for key in ("label", "condition"):
        if key in chunk:
            out[key] = tf.cast(chunk[key], tf.int32)
    return out


def _mix(seed: int, epoch) -> tf.Tensor:
    """A shuffle seed from (seed, epoch), the same on every pipeline."""
    return tf.cast(epoch, tf.int64) * 1_000_003 + tf.constant(seed % 2**31, tf.int64)


def describe_error(cfg, shard: Shard, kind: str, line: int, value: int) -> DataError:
    """The message of a stream check; the file is re-read in Python where that gives the
    same message as the in-memory path (NUL bytes, UTF-8 with its column, line counts)."""
    d = cfg.data
    src = shard.paths[0]
    path = shard.paths[-1] if kind.endswith("-target") else src
    where = f"{path}: record {line - 1}" if shard.kind == "tfrecord" else f"{path}:{line}"
    if kind == "none-left":
        return DataError(
            "data.train: no training example left in an epoch (every example dropped as "
            "empty or longer than data.max_source_length/max_target_length)"
        )
    if kind == "count":
        counts = [len(textio.read_file(p, "replace")[0]) for p in shard.paths]
        return DataError(
            f"{shard.paths[0]}: {counts[0]} lines but {shard.paths[1]}: {counts[1]} lines; "
            f"source and target files must be line-aligned"
        )
    if kind.startswith(("nul-", "utf8-")):
        try:
            textio.read_file(path, d.invalid_utf8)
        except DataError as err:
            return err
        return DataError(f"{where}: invalid text (NUL byte or invalid UTF-8)")
    if kind == "fields":
        return DataError(
            f"{where}: {value} tab-separated fields, but the header has {shard.columns['fields']}"
        )
    if kind == "tab":
        return DataError(f"{where}: expected 'label<TAB>text', found no tab")
    if kind == "label-empty":
        return DataError(f"{where}: empty label before the tab")
    if kind in ("label", "condition"):
        what = "labels.txt" if kind == "label" else "conditions.txt"
        return DataError(
            f"{where}: {kind} not in the vocabulary {what} (built from data.vocab_sample "
            f"examples); raise data.vocab_sample or give the file"
        )
    if kind == "feature":
        return DataError(f"{where}: a needed feature is missing")
    side = kind.split("-", 1)[1] if "-" in kind else "source"
    if kind.startswith("empty-"):
        return DataError(
            f"{where}: {side} is empty (a blank line or no token after tokenization); "
            f"fix the line or set data.empty_examples: drop"
        )
    if kind == "long-source":
        return DataError(
            f"{where}: source is {value} tokens with EOS, over "
            f"data.max_source_length={d.max_source_length} (data.length_policy: error)"
        )
    if kind == "long-target":
        return DataError(
            f"{where}: target is {value} tokens with BOS/EOS, over "
            f"data.max_target_length={d.max_target_length} (data.length_policy: error)"
        )
    return DataError(f"{where}: stream check '{kind}' failed")  # pragma: no cover


def capacities_for(module, num_replicas: int) -> np.ndarray:
    d = module.cfg.data
    budget = batching.per_replica_budget(d.batch_size, d.batch_unit, d.batch_scope, num_replicas)
    return batching.capacities(module.boundaries, budget, d.batch_unit)
