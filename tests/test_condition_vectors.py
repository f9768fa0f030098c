"""Condition vectors from a data column (`model.condition_dim`): TSV cells of numbers
separated by spaces and TFRecord float lists become float32 `(B, condition_dim)`
batches; a bad cell is one line naming the file, line and column."""

import numpy as np
import pytest
import tensorflow as tf

import kerastx
from kerastx.data import DataError, build_data
from kerastx.data.conditions import vector_problem, vector_text
from tests.data.conftest import write_lines

VECTORS = [[0.5, -1.0, 2.25], [1e-3, 0.0, -7.0], [0.1, 0.2, 0.3]]


def _tsv(tmp_path, cells) -> str:
    rows = ["src\ttgt\tvec"] + [f"a b c\tc b a\t{c}" for c in cells]
    return write_lines(tmp_path / "v.tsv", rows)


def _tfrecord(tmp_path, vectors) -> str:
    path = str(tmp_path / "v.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for v in vectors:
            text = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a b c"]))
            vec = tf.train.Feature(float_list=tf.train.FloatList(value=v))
            feature = {"src": text, "tgt": text, "vec": vec}
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return path


def _corpus(kind: str, path: str) -> dict:
    return {
        "type": kind,
        "path": path,
        "source_column": "src",
        "target_column": "tgt",
        "condition_column": "vec",
    }


def _data(tmp_path, kind: str, path: str, dim: int = 3) -> dict:
    return {
        "train": [_corpus(kind, path)],
        "dev": _corpus(kind, path),
        "source_tokenizer": {"type": "symbols"},
        "target_tokenizer": {"type": "symbols"},
        "max_source_length": 8,
        "max_target_length": 8,
        "batch_size": 64,
        "shuffle_buffer": 0,
    }


def _experiment(tmp_path, data: dict, **model):
    return kerastx.Experiment.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": data,
            "model": {
                "d_model": 16,
                "num_heads": 2,
                "num_encoder_layers": 1,
                "num_decoder_layers": 1,
                "ffn_dim": 32,
                "max_length": 8,
                "condition_dim": 3,
                **model,
            },
            "training": {"train_steps": 2, "checkpoint_every": 2, "log_every": 2},
            "evaluation": {"every": 0, "metrics": ["accuracy"]},
            "export": {"enabled": False},
            "decoding": {"max_length": 8},
        }
    )


@pytest.mark.parametrize("kind", ["tsv", "tfrecord"])
def test_vectors_are_float32_batches_and_train(tmp_path, kind):
    if kind == "tsv":
        path = _tsv(tmp_path, [" ".join(str(x) for x in v) for v in VECTORS])
    else:
        path = _tfrecord(tmp_path, VECTORS)
    exp = _experiment(tmp_path, _data(tmp_path, kind, path))
    data = build_data(exp.cfg)
    assert data.conditions is None and "conditions" not in data.paths  # no tag file
    batch = next(iter(data.eval_dataset("dev", 8)))
    assert batch["condition"].dtype == tf.float32
    np.testing.assert_array_equal(batch["condition"].numpy(), np.float32(VECTORS))
    train = next(iter(data.train_dataset_fn()(None)))
    rows = train["example_id"].numpy()
    np.testing.assert_array_equal(train["condition"].numpy(), np.float32(VECTORS)[rows])
    if kind == "tsv":  # before the fix vectors were taken for tags: step 1 crashed
        trained = _experiment(tmp_path, {**_data(tmp_path, kind, path), "dev": None})
        trained.cfg.run_dir = str(tmp_path / "trained")
        assert trained.train()["step"] == 2


def test_vector_text_round_trips_float32():
    values = np.float32([0.1, -3.0e-7, 123456.78, 1.0])
    assert vector_text(values) == "0.1 -0.0000003 123456.78 1"
    np.testing.assert_array_equal(np.float32(vector_text(values).split()), values)


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("0.5 1", "expected 3 numbers separated by spaces (model.condition_dim), got 2"),
        ("0.5 1 2 3", "expected 3 numbers separated by spaces (model.condition_dim), got 4"),
        ("0.5 x 2", "'x' is not a number"),
        ("0.5 nan 2", "'nan' is not a finite float32 number"),
        ("0.5 2 -inf", "'-inf' is not a finite float32 number"),
        ("1e39 0 0", "'1e39' is not a finite float32 number"),
        ("", "expected 3 numbers"),
    ],
)
def test_vector_problems(cell, problem):
    assert vector_problem(cell, 3).startswith(problem)
    assert vector_problem(" 1  2\t3 ", 3) is None


def test_bad_tsv_vector_names_file_line_and_column(tmp_path):
    path = _tsv(tmp_path, ["1 2 3", "0.5 nan 2"])
    data = build_data(_experiment(tmp_path, _data(tmp_path, "tsv", path)).cfg)
    with pytest.raises(DataError) as err:
        data.train_corpora()
    assert str(err.value) == (
        f"{path}:3: condition column 'vec' '0.5 nan 2': 'nan' is not a finite float32 "
        f"number (NaN and inf are refused)"
    )


def test_bad_tfrecord_vector_names_the_record(tmp_path):
    path = _tfrecord(tmp_path, [[1, 2, 3], [1, 2]])
    data = build_data(_experiment(tmp_path, _data(tmp_path, "tfrecord", path)).cfg)
    with pytest.raises(DataError, match=r": record 1: condition column 'vec' '1 2': expected 3"):
        data.train_corpora()
