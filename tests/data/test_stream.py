"""Streamed training corpora (kerastx.data.stream): every example of an epoch exactly
once, counts equal to the in-memory path's, batches within their budgets, the same
one-line errors as the in-memory path, disjoint pipelines, and iterator-state resume."""

from __future__ import annotations

import gzip
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from kerastx.data import DataError, build_data, shards, stream, textio
from kerastx.special_ids import BOS_ID, EOS_ID, PAD_ID


def _write(path, lines, gz: bool) -> str:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if gz:
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _corpus(tmp_path, sizes=(230, 170, 301), gz=(True, False, True), seed=0):
    """Parallel shards: source words -> reversed letters; some too long, some empty."""
    rng = random.Random(seed)
    for shard, (n, z) in enumerate(zip(sizes, gz)):
        src, tgt = [], []
        for i in range(n):
            length = rng.choice([1, 2, 3, 5, 8, 13, 30])  # 30 letters: over the limit
            word = "".join(rng.choice("abcdefgh") for _ in range(length))
            if i % 97 == 5:
                word = ""  # empty: dropped and counted as empty
            src.append(" ".join(word))
            tgt.append(" ".join(reversed(word)))
        ext = ".gz" if z else ""
        _write(tmp_path / f"part-{shard}.src{ext}", src, z)
        _write(tmp_path / f"part-{shard}.tgt{ext}", tgt, z)
    return str(tmp_path / "part-*.src*"), str(tmp_path / "part-*.tgt*")


def _cfg(make_cfg, tmp_path, mode="stream", name="exp", **data):
    src, tgt = _corpus(tmp_path)
    settings = {
        "train": [{"type": "parallel", "source": src, "target": tgt}],
        "source_tokenizer": {"type": "symbols"},
        "target_tokenizer": {"type": "symbols"},
        "shared_vocab": True,
        "max_source_length": 24,
        "max_target_length": 24,
        "batch_size": 96,
        "bucket_width": 4,
        "shuffle_buffer": 150,
        "stream": mode,
        **data,
    }
    return make_cfg(settings, name=name)


def _epoch(dataset, epoch=0):
    """The batches of one epoch (as numpy dicts), read until the next epoch starts."""
    out = []
    for batch in dataset:
        e = int(batch["epoch"])
        if e > epoch:
            break
        if e == epoch:
            out.append({k: v.numpy() for k, v in batch.items()})
    return out


def _tokens(row):
    """The tokens of a framed source row: up to EOS."""
    row = list(row)
    return row[: row.index(EOS_ID)]


def test_every_kept_example_once_per_epoch_and_counts_equal_memory(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path)
    data = build_data(cfg)
    assert data.streamed
    memory = build_data(_cfg(make_cfg, tmp_path, mode="memory", name="mem"))
    assert not memory.streamed
    expected = memory.report()["train"]
    kept_ids = np.concatenate([c.example_id for c in memory.train_corpora()])
    for epoch in (0, 1):
        batches = _epoch(data.stream_dataset(1), epoch)
        ids = np.concatenate([b["example_id"] for b in batches])
        assert len(ids) == len(set(ids.tolist())) == len(kept_ids)
        counts = np.sum([b["counts"] for b in batches], axis=0)
        read, dropped, empty, truncated, replaced = counts.tolist()
        assert read == expected["examples"] == 701
        assert dropped == expected["dropped"] > 0
        assert empty == expected["empty"] > 0
        assert truncated == expected["truncated"] == 0
        assert replaced == 0
        assert [b["index"] for b in batches] == list(range(len(batches)))


def test_example_ids_name_shard_and_line(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path, shuffle_buffer=0)
    data = build_data(cfg)
    batches = _epoch(data.stream_dataset(1))
    tok = data.source_tokenizer
    files = sorted(textio.expand(str(tmp_path / "part-*.src*")))
    lines = [textio.read_file(p)[0] for p in files]
    for batch in batches:
        for eid, row in zip(batch["example_id"], batch["source_ids"]):
            shard, line = int(eid) // shards.FILE_STRIDE, int(eid) % shards.FILE_STRIDE
            want = tok.tokenize(tf.constant([lines[shard][line]])).flat_values.numpy().tolist()
            assert _tokens(row) == want


def test_batches_pad_to_a_boundary_and_keep_the_budget(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path)
    data = build_data(cfg)
    bounds = set(data.boundaries.tolist())
    for batch in _epoch(data.stream_dataset(1)):
        src, tin, tout = batch["source_ids"], batch["target_in_ids"], batch["target_out_ids"]
        assert src.shape[1] == tin.shape[1] == tout.shape[1] and src.shape[1] in bounds
        assert src.size <= cfg.data.batch_size
        assert (tin[:, 0] == BOS_ID).all()
        # target_out is target_in shifted left, ended by EOS
        for a, b in zip(tin, tout):
            n = list(b).index(EOS_ID)
            assert list(a[1 : n + 1]) == list(b[:n]) and (b[n + 1 :] == PAD_ID).all()


def test_two_pipelines_read_disjoint_halves_of_the_epoch(make_cfg, tmp_path):
    """Three files over two pipelines (file shards) and over four (line shards)."""
    data = build_data(_cfg(make_cfg, tmp_path))
    everything = sorted(
        np.concatenate([b["example_id"] for b in _epoch(data.stream_dataset(1))]).tolist()
    )
    for pipes in (2, 4):
        parts = [
            np.concatenate([b["example_id"] for b in _epoch(data.stream_dataset(pipes, pipes, p))])
            for p in range(pipes)
        ]
        union = sorted(np.concatenate(parts).tolist())
        assert union == everything, pipes
        assert all(len(p) for p in parts)


def test_the_same_seed_gives_the_same_stream_and_epochs_differ(make_cfg, tmp_path):
    data = build_data(_cfg(make_cfg, tmp_path))
    a = [b["example_id"].tolist() for b in _epoch(data.stream_dataset(1))]
    b = [b["example_id"].tolist() for b in _epoch(data.stream_dataset(1))]
    c = [b["example_id"].tolist() for b in _epoch(data.stream_dataset(1), 1)]
    assert a == b
    assert a != c


def test_iterator_state_resumes_mid_epoch_exactly(make_cfg, tmp_path):
    data = build_data(_cfg(make_cfg, tmp_path))
    dataset = data.stream_dataset(1)
    it = iter(dataset)
    for _ in range(7):
        next(it)
    prefix = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it" / "ckpt"))
    after = [next(it)["example_id"].numpy().tolist() for _ in range(30)]  # into epoch 2
    fresh = iter(data.stream_dataset(1))
    tf.train.Checkpoint(iterator=fresh).read(prefix).assert_consumed()
    assert [next(fresh)["example_id"].numpy().tolist() for _ in range(30)] == after


def _train_batch(data):
    return next(iter(data.stream_dataset(1)))


def test_parallel_line_counts_differ_is_one_line_with_both_counts(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path)
    path = tmp_path / "part-1.tgt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # 167 target lines for 170 sources
    data = build_data(cfg)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in data.stream_dataset(1).take(100):
            pass
    err = data.stream_error(info.value)
    assert str(err) == (
        f"{tmp_path}/part-1.src: 170 lines but {tmp_path}/part-1.tgt: 167 lines; source and "
        f"target files must be line-aligned"
    )


@pytest.mark.parametrize(
    "bad, policy",
    [(b"ab\x00c", "error"), (b"a\xffb", "error")],
    ids=["nul", "utf8"],
)
def test_bad_bytes_give_the_in_memory_message(make_cfg, tmp_path, bad, policy):
    cfg = _cfg(make_cfg, tmp_path, vocab_sample=15)  # the sample stops before line 41
    path = tmp_path / "part-1.src"
    lines = path.read_bytes().split(b"\n")
    lines[40] = bad
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as memory_err:
        textio.read_file(str(path), policy)
    data = build_data(cfg)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in data.stream_dataset(1).take(100):
            pass
    assert str(data.stream_error(info.value)) == str(memory_err.value)
    assert ":41:" in str(memory_err.value)


def test_invalid_utf8_replaced_is_counted(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path, invalid_utf8="replace", vocab_sample=15)
    path = tmp_path / "part-1.src"
    lines = path.read_bytes().split(b"\n")
    lines[40] = b"a \xff b"
    lines[41] = b"c \xfe"
    path.write_bytes(b"\n".join(lines))
    data = build_data(cfg)
    counts = np.sum([b["counts"] for b in _epoch(data.stream_dataset(1))], axis=0)
    assert counts[stream.COUNT_KEYS.index("replaced")] == 2


def test_too_long_under_error_policy_names_file_and_line(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path, length_policy="error")
    data = build_data(cfg)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in data.stream_dataset(1).take(100):
            pass
    message = str(data.stream_error(info.value))
    assert "tokens with EOS, over data.max_source_length=24 (data.length_policy: error)" in message
    path, line = message.split(":")[:2]
    text = textio.read_file(path)[0][int(line) - 1]
    assert len(text.split()) + 1 > 24


def test_truncate_policy_cuts_and_counts(make_cfg, tmp_path):
    data = build_data(_cfg(make_cfg, tmp_path, length_policy="truncate"))
    batches = _epoch(data.stream_dataset(1))
    counts = np.sum([b["counts"] for b in batches], axis=0)
    assert counts[stream.COUNT_KEYS.index("truncated")] > 0
    assert counts[stream.COUNT_KEYS.index("dropped")] == 0
    assert max(b["source_ids"].shape[1] for b in batches) <= 24


def test_text_corpus_for_a_language_model(make_cfg, tmp_path):
    lines = [" ".join("abc"[: 1 + i % 3]) for i in range(300)]
    path = _write(tmp_path / "lm.txt.gz", lines, True)
    cfg = make_cfg(
        {
            "train": [{"type": "text", "path": path}],
            "source_tokenizer": {"type": "symbols"},
            "max_source_length": 8,
            "batch_size": 64,
            "stream": "stream",
            "shuffle_buffer": 50,
        },
        model_type="decoder_lm",
    )
    data = build_data(cfg)
    batches = _epoch(data.stream_dataset(1))
    assert sorted(np.concatenate([b["example_id"] for b in batches]).tolist()) == list(range(300))
    assert set(batches[0]) >= {"token_ids", "target_out_ids"}


def test_tsv_corpus_for_a_classifier(make_cfg, tmp_path):
    rows = ["label\ttext"] + [
        f"{'pos' if i % 2 else 'neg'}\t{'a b' if i % 2 else 'c'}" for i in range(120)
    ]
    path = _write(tmp_path / "c.tsv", rows, False)
    cfg = make_cfg(
        {
            "train": [
                {"type": "tsv", "path": path, "source_column": "text", "label_column": "label"}
            ],
            "source_tokenizer": {"type": "symbols"},
            "max_source_length": 8,
            "batch_size": 64,
            "stream": "stream",
        },
        model_type="encoder_classifier",
    )
    data = build_data(cfg)
    batches = _epoch(data.stream_dataset(1))
    labels = {}
    for b in batches:
        for eid, label in zip(b["example_id"], b["label"]):
            labels[int(eid)] = int(label)
    assert sorted(labels) == list(range(120))  # data line i of the file (after the header)
    assert all(labels[i] == data.labels.tags.index("pos" if i % 2 else "neg") for i in labels)


def test_auto_reads_small_corpora_in_memory_and_says_why(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path, mode="auto")
    streamed, why = shards.choose(cfg)
    assert not streamed and why.startswith("data.stream: auto; 6 files,") and "<= 32 MiB" in why


def test_synthetic_corpora_cannot_be_streamed(make_cfg):
    cfg = make_cfg(
        {
            "train": [{"type": "synthetic", "task": "copy", "num_examples": 10}],
            "stream": "stream",
        }
    )
    with pytest.raises(DataError, match=r"data.train\[0\]: corpus type 'synthetic' is generated"):
        build_data(cfg)


def test_vocabulary_from_a_bounded_sample_is_recorded(make_cfg, tmp_path):
    cfg = _cfg(make_cfg, tmp_path, vocab_sample=30)
    build_data(cfg)
    import json

    with open(os.path.join(cfg.run_dir, "vocab", "manifest.json")) as f:
        manifest = json.load(f)
    # 30 examples over 3 shards: the first 10 lines of each
    assert manifest["sample"] == {"data.vocab_sample": 30, "files": 3, "examples": 30}


def _ids_and_rows(batches):
    return [(b["example_id"].tolist(), b["source_ids"].tolist()) for b in batches]


def test_prepared_shards_give_the_same_batches_and_resume(make_cfg, tmp_path):
    from kerastx.data import prepare, prepared

    cfg = _cfg(make_cfg, tmp_path)
    text = _ids_and_rows(_epoch(build_data(cfg).stream_dataset(1)))
    out = prepare.prepare(cfg)
    assert (out["shards"], out["written"], out["examples"]) == (3, 3, 701)
    data = build_data(cfg)
    dataset = data.stream_dataset(1)  # checks and picks the prepared shards
    assert data.prepared == [prepared.shard_path(cfg.run_dir, i) for i in range(3)]
    assert _ids_and_rows(_epoch(dataset)) == text
    # Resumable: a shard that is gone is made again, the others are kept.
    first = prepared.shard_path(cfg.run_dir, 0)
    os.remove(prepared.shard_path(cfg.run_dir, 1))
    manifest = prepared.read_manifest(cfg.run_dir)
    prepared.write_manifest(cfg.run_dir, {**manifest, "done": [0, 2]})
    with pytest.raises(DataError, match=r"incomplete \(2 of 3 shards prepared\)"):
        build_data(cfg).stream_dataset(1)
    before = os.stat(first).st_mtime_ns
    out = prepare.prepare(cfg)
    assert (out["written"], out["kept"]) == (1, 2)
    assert os.stat(first).st_mtime_ns == before
    assert _ids_and_rows(_epoch(build_data(cfg).stream_dataset(1))) == text


def test_prepared_shards_of_changed_inputs_are_refused(make_cfg, tmp_path):
    from kerastx.data import prepare

    cfg = _cfg(make_cfg, tmp_path)
    prepare.prepare(cfg)
    path = tmp_path / "part-1.src"
    path.write_text(path.read_text() + "a b\n")
    with pytest.raises(DataError, match=r"prepared from other data \(.*part-1.src changed since"):
        build_data(cfg).stream_dataset(1)


def test_a_streamed_run_needs_no_training_file_after_its_vocabularies(make_cfg, tmp_path):
    """Evaluate, predict and export build the data module: only its vocabularies."""
    src = tmp_path / "dev.src"
    src.write_text("a b\nc d\n")
    (tmp_path / "dev.tgt").write_text("b a\nd c\n")
    cfg = _cfg(
        make_cfg,
        tmp_path,
        name="run2",
        dev={"type": "parallel", "source": str(src), "target": str(tmp_path / "dev.tgt")},
    )
    build_data(cfg)  # builds the vocabularies from the sample
    for path in tmp_path.glob("part-*"):
        path.unlink()
    data = build_data(cfg)
    assert data.streamed
    assert len(list(data.eval_dataset("dev", 8))) == 1
    with pytest.raises(DataError, match="no file matches this pattern"):
        data.stream_dataset(1)
