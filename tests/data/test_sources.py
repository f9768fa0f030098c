"""Every corpus type, the model types' batch keys, mixing, and the evaluation sets."""

from __future__ import annotations

import collections
import gzip
import re

import numpy as np
import pytest
import tensorflow as tf

from kerastx.data import EOS, DataError, build_data, split_example_id, synthetic, textio
from tests.data.conftest import write_lines


def _first(data, start=(0, 0)):
    return next(iter(data.train_dataset_fn(start)(None)))


def _text(t):
    return [s.decode("utf-8") for s in t.numpy().tolist()]


def test_tsv_with_condition_column(make_cfg, tmp_path):
    rows = ["lang\tsource\ttarget"] + [f"{'de' if i % 3 else 'fr'}\tab{i}\tx{i}" for i in range(9)]
    path = write_lines(tmp_path / "d.tsv", rows)
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "tsv", "path": path, "condition_column": "lang"}],
                "dev": {"type": "tsv", "path": path, "condition_column": "lang"},
                "shuffle_buffer": 0,
                "batch_size": 64,
                "max_source_length": 8,
                "max_target_length": 8,
            }
        )
    )
    assert data.conditions.tags == ["de", "fr"]
    batch = next(iter(data.eval_dataset("dev", 4)))
    assert batch["condition"].numpy().tolist() == [1, 0, 0, 1]
    assert _text(batch["source_text"]) == ["ab0", "ab1", "ab2", "ab3"]
    assert _text(batch["target_text"]) == ["x0", "x1", "x2", "x3"]
    train = _first(data)
    ids = train["example_id"].numpy()
    assert train["condition"].numpy().tolist() == [0 if i % 3 else 1 for i in ids]


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tfrecord_source(make_cfg, tmp_path, compression):
    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

    path = str(tmp_path / "d.tfrecord")
    with tf.io.TFRecordWriter(path, options=compression or None) as writer:
        for i in range(5):
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={"src": feature("abc"[: i % 3 + 1]), "tgt": feature("xy" * (i + 1))}
                )
            )
            writer.write(ex.SerializeToString())
    data = build_data(
        make_cfg(
            {
                "train": [
                    {
                        "type": "tfrecord",
                        "path": path,
                        "source_column": "src",
                        "target_column": "tgt",
                    }
                ],
                "dev": {
                    "type": "tfrecord",
                    "path": path,
                    "source_column": "src",
                    "target_column": "tgt",
                },
                "max_source_length": 8,
                "max_target_length": 8,
            }
        )
    )
    batch = next(iter(data.eval_dataset("dev", 8)))
    assert _text(batch["source_text"]) == ["a", "ab", "abc", "a", "ab"]
    assert _text(batch["target_text"]) == ["xy", "xyxy", "xyxyxy", "xyxyxyxy", "xyxyxyxyxy"]
    assert batch["example_id"].numpy().tolist() == [0, 1, 2, 3, 4]
    # The last target is 10 tokens + 1 > 8: truncated for the model, whole as text.
    assert data.report()["dev"]["truncated"] == 2
    assert _text(data.target_tokenizer.detokenize(batch["target_out_ids"]))[4] == "xyxyxyx"


def test_labelled_classifier(make_cfg, tmp_path):
    path = write_lines(tmp_path / "l.txt", ["pos\tgood film", "neg\tbad film", "pos\tfine"])
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "labelled", "path": path}],
                "dev": {"type": "labelled", "path": path},
                "source_tokenizer": {"type": "words"},
                "shuffle_buffer": 0,
                "batch_size": 32,
                "max_source_length": 8,
                "bucket_width": 0,
            },
            model_type="encoder_classifier",
        )
    )
    assert data.labels.tags == ["neg", "pos"] and data.target_tokenizer is None
    batch = _first(data)
    assert set(batch) == {"source_ids", "label", "example_id", "epoch", "index"}
    by_id = dict(zip(batch["example_id"].numpy().tolist(), batch["label"].numpy().tolist()))
    assert by_id == {0: 1, 1: 0, 2: 1}
    assert batch["label"].dtype == tf.int32
    dev = next(iter(data.eval_dataset("dev", 3)))
    assert _text(dev["target_text"]) == ["pos", "neg", "pos"]
    assert data.references("dev") == {"good film": ["pos"], "bad film": ["neg"], "fine": ["pos"]}


def test_text_language_model_with_crlf_and_bom(make_cfg, tmp_path):
    path = tmp_path / "lm.txt"
    path.write_bytes("\ufeffab\r\nabc\r\n\r\nb\r\n".encode())
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "text", "path": str(path)}],
                "shuffle_buffer": 0,
                "batch_size": 4,
                "batch_unit": "examples",
                "bucket_width": 0,
                "max_source_length": 5,
            },
            model_type="decoder_lm",
        )
    )
    batch = _first(data)
    assert set(batch) == {"token_ids", "target_out_ids", "example_id", "epoch", "index"}
    a, b, c = (data.source_tokenizer.tokenize(tf.constant([x])).to_list()[0][0] for x in "abc")
    # The blank third line is an empty example: dropped and counted (data.empty_examples).
    assert data.report()["train"]["empty"] == 1
    assert batch["example_id"].numpy().tolist() == [0, 1, 3]
    assert batch["token_ids"].numpy().tolist() == [
        [1, a, b, 0, 0],
        [1, a, b, c, 0],
        [1, b, 0, 0, 0],
    ]
    assert batch["target_out_ids"].numpy().tolist() == [
        [a, b, EOS, 0, 0],
        [a, b, c, EOS, 0],
        [b, EOS, 0, 0, 0],
    ]


def test_glob_reads_files_in_order_with_positions(make_cfg, tmp_path):
    write_lines(tmp_path / "b.txt", ["bb", "bbb"])
    write_lines(tmp_path / "a.txt", ["a"])
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "text", "path": str(tmp_path / "*.txt")}],
                "dev": {"type": "text", "path": str(tmp_path / "*.txt")},
            },
            model_type="decoder_lm",
        )
    )
    batch = next(iter(data.eval_dataset("dev", 8)))
    assert _text(batch["source_text"]) == ["a", "bb", "bbb"]
    assert set(batch) == {"token_ids", "target_out_ids", "example_id", "source_text"}
    assert data.references("dev") == {}


def test_gzipped_shards_read_as_their_text(make_cfg, tmp_path):
    # Sharded, gzipped text (how large corpora ship) reads as the plain files do; a gzip
    # file is known by its first bytes, and line numbers are those of its text.
    src, tgt = ["cat", "dog", "emu"], ["C A T", "D O G", "E M U"]
    for name, lines in (("s", src), ("t", tgt)):
        with gzip.open(tmp_path / f"{name}.txt.gz", "wt", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    write_lines(tmp_path / "s.txt", src)
    write_lines(tmp_path / "t.txt", tgt)

    def corpus(suffix, name):
        return [
            {
                "type": "parallel",
                "source": str(tmp_path / f"s.txt{suffix}"),
                "target": str(tmp_path / f"t.txt{suffix}"),
            }
        ]

    zipped = build_data(make_cfg({"train": corpus(".gz", "z")}, name="z")).train_corpora()[0]
    plain = build_data(make_cfg({"train": corpus("", "p")}, name="p")).train_corpora()[0]
    assert zipped.source.lengths.tolist() == plain.source.lengths.tolist()
    assert zipped.target.lengths.tolist() == plain.target.lengths.tolist()

    # Inside a gzip file, NUL bytes and bad UTF-8 are found at their decompressed line.
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"ok\nd\xffg\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/bad.gz:2: invalid UTF-8")):
        textio.read_file(str(tmp_path / "bad.gz"))
    # A cut gzip stream and an empty one are one line each.
    whole = (tmp_path / "s.txt.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path}/cut.gz: not a readable gzip file (")
    ):
        textio.read_file(str(tmp_path / "cut.gz"))
    (tmp_path / "empty.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(
        DataError,
        match=re.escape(f"{tmp_path}/empty.gz: file is empty (a gzip file holding nothing)"),
    ):
        textio.read_file(str(tmp_path / "empty.gz"))


@pytest.mark.parametrize(
    "task,expected",
    [
        ("copy", lambda s: s),
        ("reverse", lambda s: s[::-1]),
        ("sort", lambda s: sorted(s, key=[synthetic.symbol(i) for i in range(70)].index)),
        ("addition", None),
    ],
)
def test_synthetic_tasks(task, expected):
    sources, targets = synthetic.generate(task, 50, 2, 6, 70, seed=3)
    again = synthetic.generate(task, 50, 2, 6, 70, seed=3)
    assert (sources, targets) == again
    assert synthetic.generate(task, 50, 2, 6, 70, seed=3, split="dev") != again
    for s, t in zip(sources, targets):
        if task == "addition":
            x, y = s.replace(" ", "").split("+")
            assert int(x) + int(y) == int(t.replace(" ", "")) and x[0] != "0"
            assert 2 <= len(x) <= 6 and s == " ".join(f"{x}+{y}")
        else:
            symbols = s.split(" ")
            assert 2 <= len(symbols) <= 6
            assert set(symbols) <= {synthetic.symbol(i) for i in range(70)}
            assert t.split(" ") == list(expected(symbols))
    if task == "copy":
        assert synthetic.symbol(61) == "9" and synthetic.symbol(62) == "s62"
        assert any(len(x) == 3 for s in sources for x in s.split(" "))  # s62 .. s69 occur


def test_synthetic_corpus_and_two_corpora_mixed_by_weight(make_cfg, tmp_path):
    small = write_lines(tmp_path / "s.txt", [f"s{i}" for i in range(10)])
    data = build_data(
        make_cfg(
            {
                "train": [
                    {"type": "synthetic", "task": "reverse", "num_examples": 30, "max_length": 5},
                    {"type": "parallel", "source": small, "target": small, "weight": 3.0},
                ],
                "source_tokenizer": {"type": "symbols"},
                "target_tokenizer": {"type": "symbols"},
                "batch_size": 12,
                "batch_unit": "examples",
                "max_source_length": 8,
                "max_target_length": 8,
            }
        )
    )
    planner = data.planner(1)
    assert planner.quotas == [10, 30]  # 40 examples an epoch, weights 1:3
    seen = collections.Counter()
    for epoch in range(2):
        rows, _, _ = planner.batches(epoch)
        ids = data._train_store().example_id.numpy()[rows]
        parts = [split_example_id(i) for i in ids]
        per = collections.Counter(c for c, _ in parts)
        assert per == {0: 10, 1: 30}
        small_counts = collections.Counter(p for c, p in parts if c == 1)
        assert set(small_counts.values()) == {3}  # every small example 3 times an epoch
        seen.update(p for c, p in parts if c == 0)
    # The synthetic corpus (30 examples, 10 an epoch): 20 distinct ones in 2 epochs.
    assert len(seen) == 20 and set(seen.values()) == {1} and set(seen) <= set(range(30))
    batch = _first(data)
    for src, out in zip(
        _text(data.source_tokenizer.detokenize(batch["source_ids"])),
        _text(data.target_tokenizer.detokenize(batch["target_out_ids"])),
    ):
        assert out in (" ".join(src.split()[::-1]), src)


def test_eval_dataset_keeps_file_order_and_counts_truncation(make_cfg, tmp_path):
    src = write_lines(tmp_path / "s.txt", ["abc", "abcdefghij", "b", "abc"])
    tgt = write_lines(tmp_path / "t.txt", ["x y", "y", "z", "x x"])
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "parallel", "source": src, "target": tgt}],
                "dev": {"type": "parallel", "source": src, "target": tgt},
                "target_tokenizer": {"type": "symbols"},
                "max_source_length": 6,
                "max_target_length": 6,
                "bucket_width": 2,
            }
        )
    )
    batches = list(data.eval_dataset("dev", 3))
    assert [b["source_ids"].shape.as_list() for b in batches] == [[3, 6], [1, 4]]
    assert [b["target_in_ids"].shape.as_list() for b in batches] == [[3, 4], [1, 4]]
    assert np.concatenate([b["example_id"] for b in batches]).tolist() == [0, 1, 2, 3]
    assert _text(batches[0]["source_text"])[1] == "abcdefghij"
    assert _text(data.source_tokenizer.detokenize(batches[0]["source_ids"])) == [
        "abc",
        "abcde",
        "b",
    ]
    report = data.report()
    assert report["dev"]["truncated"] == 1 and report["dev"]["kept"] == 4
    assert report["train"]["dropped"] == 1 and report["train"]["kept"] == 3
    assert data.references("dev") == {"abc": ["x y", "x x"], "abcdefghij": ["y"], "b": ["z"]}


def test_tfrecord_classifier_with_int64_labels(make_cfg, tmp_path):
    path = str(tmp_path / "c.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for text, label in (("good", 1), ("bad", 0), ("ok", 1)):
            feature = {
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    corpus = {"type": "tfrecord", "path": path, "source_column": "text", "label_column": "y"}
    data = build_data(make_cfg({"train": [corpus], "dev": corpus}, model_type="encoder_classifier"))
    assert data.labels.tags == ["0", "1"]
    batch = next(iter(data.eval_dataset("dev", 3)))
    assert batch["label"].numpy().tolist() == [1, 0, 1]
    assert _text(batch["source_text"]) == ["good", "bad", "ok"]
