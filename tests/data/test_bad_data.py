"""Every bad-data case stops with one exact line naming the file (and line)."""

from __future__ import annotations

import re

import pytest
import tensorflow as tf

from kerastx.data import DataError, build_data
from tests.data.conftest import write_lines


def _parallel(src, tgt, **extra):
    return {"train": [{"type": "parallel", "source": src, "target": tgt}], **extra}


def _raises(cfg, message):
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        build_data(cfg).report()


def test_missing_file(make_cfg, tmp_path):
    tgt = write_lines(tmp_path / "t.txt", ["a"])
    missing = str(tmp_path / "nope.txt")
    _raises(make_cfg(_parallel(missing, tgt)), f"{missing}: file not found")


def test_empty_file(make_cfg, tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"")
    tgt = write_lines(tmp_path / "t.txt", ["a"])
    _raises(make_cfg(_parallel(str(src), tgt)), f"{src}: file is empty")


def test_mismatched_line_counts(make_cfg, tmp_path):
    src = write_lines(tmp_path / "s.txt", ["a", "b", "c"])
    tgt = write_lines(tmp_path / "t.txt", ["a", "b"])
    _raises(
        make_cfg(_parallel(src, tgt)),
        f"{src}: 3 lines but {tgt}: 2 lines; source and target files must be line-aligned",
    )


def test_invalid_utf8_names_file_line_and_column(make_cfg, tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"ok\nab\xffc\n")
    tgt = write_lines(tmp_path / "t.txt", ["a", "b"])
    _raises(
        make_cfg(_parallel(str(src), tgt)),
        f"{src}:2: invalid UTF-8 (byte 0xff at column 3); fix the file or set "
        f"data.invalid_utf8: replace",
    )


def test_invalid_utf8_replaced_and_counted(make_cfg, tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"ok\nab\xffc\n\xfe\n")
    tgt = write_lines(tmp_path / "t.txt", ["a", "b", "c"])
    data = build_data(make_cfg(_parallel(str(src), tgt, invalid_utf8="replace")))
    report = data.report()["train"]
    assert report["replaced"] == 2
    assert report["corpora"][0]["replaced"] == 2
    ids = data.source_tokenizer.tokenize(tf.constant(["ab\ufffdc"]))
    assert data.source_tokenizer.detokenize(ids).numpy().tolist() == ["ab\ufffdc".encode()]


def test_nul_byte(make_cfg, tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"ok\na\x00b\n")
    tgt = write_lines(tmp_path / "t.txt", ["a", "b"])
    _raises(
        make_cfg(_parallel(str(src), tgt)), f"{src}:2: NUL byte at column 2; is this a binary file?"
    )


def test_too_long_error_policy_names_file_and_line(make_cfg, tmp_path):
    src = write_lines(tmp_path / "s.txt", ["abc", "abcdefgh", "ab"])
    tgt = write_lines(tmp_path / "t.txt", ["x", "y", "z z z z z z z z"])
    cfg = make_cfg(
        _parallel(
            src,
            tgt,
            max_source_length=6,
            max_target_length=6,
            length_policy="error",
            target_tokenizer={"type": "words"},
        )
    )
    _raises(
        cfg,
        f"{src}:2: source is 9 tokens with EOS, over data.max_source_length=6 "
        f"(data.length_policy: error)",
    )
    src2 = write_lines(tmp_path / "s2.txt", ["abc", "ab", "ab"])
    cfg = make_cfg(
        _parallel(
            src2,
            tgt,
            max_source_length=6,
            max_target_length=6,
            length_policy="error",
            target_tokenizer={"type": "words"},
        ),
        name="exp2",
    )
    _raises(
        cfg,
        f"{tgt}:3: target is 9 tokens with BOS/EOS, over data.max_target_length=6 "
        f"(data.length_policy: error)",
    )


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_too_long_counted_per_policy(make_cfg, tmp_path, policy):
    src = write_lines(tmp_path / "s.txt", ["abc", "abcdefgh", "ab", "abcdefghijk"])
    tgt = write_lines(tmp_path / "t.txt", ["x", "y", "z", "w"])
    data = build_data(make_cfg(_parallel(src, tgt, max_source_length=6, length_policy=policy)))
    report = data.report()["train"]
    assert report["examples"] == 4
    assert (report["dropped"], report["truncated"], report["kept"]) == (
        (2, 0, 2) if policy == "drop" else (0, 2, 4)
    )
    lengths = data.train_corpora()[0].source.lengths.tolist()
    assert lengths == ([3, 2] if policy == "drop" else [3, 5, 2, 5])


def test_vocabulary_missing(make_cfg, parallel_files, tmp_path):
    missing = str(tmp_path / "vocab.txt")
    cfg = make_cfg(_parallel(*parallel_files, source_tokenizer={"vocab": missing}))
    _raises(cfg, f"{missing}: vocabulary file not found")


def test_vocabulary_without_unk(make_cfg, parallel_files, tmp_path):
    vocab = write_lines(tmp_path / "vocab.txt", ["<pad>", "<s>", "</s>", "a", "b"])
    cfg = make_cfg(_parallel(*parallel_files, source_tokenizer={"vocab": vocab}))
    _raises(
        cfg,
        f"{vocab}:4: vocabulary has no UNK: line 4 must be '<unk>' (lines 1-4 hold "
        f"<pad> <s> </s> <unk>, ids 0-3); found 'a'",
    )


def test_vocabulary_duplicate_entry(make_cfg, parallel_files, tmp_path):
    vocab = write_lines(tmp_path / "vocab.txt", ["<pad>", "<s>", "</s>", "<unk>", "a", "a"])
    cfg = make_cfg(_parallel(*parallel_files, source_tokenizer={"vocab": vocab}))
    _raises(cfg, f"{vocab}:6: duplicate vocabulary entry 'a' (first on line 5)")


def test_sentencepiece_model_with_other_ids(make_cfg, parallel_files, tmp_path):
    import sentencepiece as spm

    model = tmp_path / "sp.model"
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["hello world", "the cat sat"] * 20),
            model_writer=f,
            vocab_size=30,
            hard_vocab_limit=False,
            minloglevel=2,
        )  # default ids: unk=0, bos=1, eos=2, no pad
    cfg = make_cfg(
        _parallel(*parallel_files, source_tokenizer={"type": "sentencepiece", "vocab": str(model)})
    )
    _raises(
        cfg,
        f"{model}: SentencePiece model has no PAD at id 0 (pad_id=-1); train it "
        f"with pad_id=0 bos_id=1 eos_id=2 unk_id=3",
    )


def test_tsv_missing_column_and_bad_row(make_cfg, tmp_path):
    path = write_lines(tmp_path / "d.tsv", ["src\ttgt", "a\tb"])
    cfg = make_cfg(
        {
            "train": [
                {"type": "tsv", "path": path, "source_column": "source", "target_column": "tgt"}
            ]
        }
    )
    _raises(cfg, f"{path}:1: no column 'source' in the header (columns: src, tgt)")
    bad = write_lines(tmp_path / "e.tsv", ["source\ttarget", "a\tb", "c\td\te"])
    cfg = make_cfg({"train": [{"type": "tsv", "path": bad}]}, name="exp2")
    _raises(cfg, f"{bad}:3: 3 tab-separated fields, but the header has 2")


def test_labelled_line_without_tab(make_cfg, tmp_path):
    path = write_lines(tmp_path / "l.txt", ["pos\tgood", "bad line"])
    cfg = make_cfg({"train": [{"type": "labelled", "path": path}]}, model_type="encoder_classifier")
    _raises(cfg, f"{path}:2: expected 'label<TAB>text', found no tab")


def test_dev_label_unknown(make_cfg, tmp_path):
    train = write_lines(tmp_path / "l.txt", ["pos\tgood", "neg\tbad"])
    dev = write_lines(tmp_path / "d.txt", ["pos\tfine", "meh\tso so"])
    cfg = make_cfg(
        {"train": [{"type": "labelled", "path": train}], "dev": {"type": "labelled", "path": dev}},
        model_type="encoder_classifier",
    )
    labels = f"{cfg.run_dir}/vocab/labels.txt"
    with pytest.raises(
        DataError, match="^" + re.escape(f"{dev}:2: label 'meh' is not in {labels}") + "$"
    ):
        build_data(cfg).eval_dataset("dev", 4)


def test_tfrecord_missing_feature(make_cfg, tmp_path):
    path = str(tmp_path / "d.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for src in (b"ab", b"cd"):
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[src])),
                    }
                )
            )
            writer.write(ex.SerializeToString())
    cfg = make_cfg({"train": [{"type": "tfrecord", "path": path}]})
    _raises(cfg, f"{path}: record 0: no feature 'target' (features: source)")


def test_glob_without_match(make_cfg, tmp_path):
    pattern = str(tmp_path / "*.txt")
    cfg = make_cfg({"train": [{"type": "text", "path": pattern}]}, model_type="decoder_lm")
    _raises(cfg, f"{pattern}: no file matches this pattern")


def test_no_example_left(make_cfg, tmp_path):
    src = write_lines(tmp_path / "s.txt", ["abcdefgh"])
    tgt = write_lines(tmp_path / "t.txt", ["x"])
    data = build_data(make_cfg(_parallel(src, tgt, max_source_length=4)))
    with pytest.raises(
        DataError,
        match=re.escape(
            "data.train: no training example left (1 dropped as longer than "
            "data.max_source_length/max_target_length)"
        ),
    ):
        data.train_dataset_fn()


def test_budget_below_longest_example(make_cfg, parallel_files):
    data = build_data(
        make_cfg(
            _parallel(*parallel_files, batch_size=16, max_source_length=20, max_target_length=40)
        )
    )
    with pytest.raises(
        DataError,
        match="^"
        + re.escape(
            "data.batch_size gives 16 tokens per replica, fewer than the longest allowed "
            "example (40 tokens = max(max_source_length, max_target_length)); raise "
            "data.batch_size or lower the maximum lengths"
        )
        + "$",
    ):
        data.train_dataset_fn()(None)


def test_tfrecord_text_feature_must_be_bytes(make_cfg, tmp_path):
    path = str(tmp_path / "d.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        feature = {
            "source": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
            "target": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        }
        writer.write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    cfg = make_cfg({"train": [{"type": "tfrecord", "path": path}]})
    _raises(cfg, f"{path}: record 0: feature 'source' must be bytes (a string); it is int64_list")


def test_tfrecord_invalid_utf8(make_cfg, tmp_path):
    path = str(tmp_path / "d.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        feature = {
            "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a\xffb"])),
            "target": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        }
        writer.write(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    cfg = make_cfg({"train": [{"type": "tfrecord", "path": path}]})
    _raises(
        cfg,
        f"{path}: record 0: feature 'source': invalid UTF-8 (byte 0xff at column 2); "
        f"fix the file or set data.invalid_utf8: replace",
    )


def test_not_a_tfrecord_file(make_cfg, tmp_path):
    path = write_lines(tmp_path / "d.tfrecord", ["this is text"])
    cfg = make_cfg({"train": [{"type": "tfrecord", "path": path}]})
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: not a readable TFRecord file (")):
        build_data(cfg).report()


def test_condition_column_in_some_training_corpora_only(make_cfg, tmp_path):
    tagged = write_lines(tmp_path / "a.tsv", ["lang\tsource\ttarget", "de\ta\tb"])
    plain = write_lines(tmp_path / "b.tsv", ["source\ttarget", "c\td"])
    cfg = make_cfg(
        {
            "train": [
                {"type": "tsv", "path": tagged, "condition_column": "lang"},
                {"type": "tsv", "path": plain},
            ]
        }
    )
    with pytest.raises(
        DataError,
        match="^"
        + re.escape(
            "data.train[1]: has no condition_column while other training corpora have one; "
            "every training example needs a condition tag"
        )
        + "$",
    ):
        build_data(cfg).train_dataset_fn()
