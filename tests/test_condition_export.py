"""Conditioned seq2seq runs end to end: a tag and a vector condition from a TSV column,
trained a few steps, evaluated, predicted (`CONDITION<TAB>TEXT` lines) and exported
with the condition as a signature input (parity with the framework's predict)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops of the SavedModel

import kerastx
from kerastx import inference, predict, runs, workflow
from kerastx.errors import KerastxError

pytestmark = pytest.mark.slow  # two tiny runs trained and exported (parity checked)

WORDS = ["a b c", "b a", "c c a", "a", "b c", "c b a b", "a a c", "b"]


def _vector(i: int) -> list[float]:
    return [0.25 * (i % 2) - 0.5, 1.5 if i % 2 else -1.5, 0.125 * (i % 2)]


def _rows(kind: str) -> list[str]:
    rows = ["src\ttgt\tcond"]
    for i in range(48):
        src = WORDS[(i // 2) % len(WORDS)]
        if kind == "tag":
            cond = "rev" if i % 2 else "cp"
            tgt = " ".join(reversed(src.split())) if cond == "rev" else src
        else:
            cond = " ".join(str(v) for v in _vector(i))
            tgt = src
        rows.append(f"{src}\t{tgt}\t{cond}")
    return rows


def _train(base, kind: str) -> str:
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, "d.tsv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(_rows(kind)) + "\n")
    corpus = {
        "type": "tsv",
        "path": path,
        "source_column": "src",
        "target_column": "tgt",
        "condition_column": "cond",
    }
    condition = {"num_conditions": 2} if kind == "tag" else {"condition_dim": 3}
    exp = kerastx.Experiment.from_dict(
        {
            "run_dir": os.path.join(base, "run"),
            "data": {
                "train": [corpus],
                "dev": corpus,
                "source_tokenizer": {"type": "symbols"},
                "target_tokenizer": {"type": "symbols"},
                "shared_vocab": True,
                "max_source_length": 8,
                "max_target_length": 8,
                "batch_size": 128,
            },
            "model": {
                "d_model": 16,
                "num_heads": 2,
                "num_encoder_layers": 1,
                "num_decoder_layers": 1,
                "ffn_dim": 32,
                "dropout": 0.0,
                "max_length": 8,
                **condition,
            },
            "training": {"train_steps": 3, "checkpoint_every": 3, "log_every": 3},
            "evaluation": {"every": 0, "metrics": ["accuracy"]},
            "export": {"enabled": False, "parity_examples": 12},
            "decoding": {"max_length": 8, "batch_size": 8},
        }
    )
    exp.train()
    return exp.run_dir


@pytest.fixture(scope="module", params=["tag", "vector"])
def run(request, tmp_path_factory):
    """(kind, run_dir, export_dir): a conditioned run, trained and exported (parity checked)."""
    base = str(tmp_path_factory.mktemp(f"cond_{request.param}"))
    run_dir = _train(base, request.param)
    export_dir = workflow.export(run_dir)  # the parity check feeds the dev conditions
    return request.param, run_dir, export_dir


def _conditions(kind: str) -> tuple[str, str]:
    if kind == "tag":
        return "cp", "rev"
    return " ".join(str(v) for v in _vector(1)), " ".join(str(v) for v in _vector(2))


def test_evaluate_decodes_every_source_under_each_of_its_conditions(run):
    kind, run_dir, _ = run
    results = workflow.evaluate(run_dir, "dev")
    pairs = {(row.split("\t")[2], row.split("\t")[0]) for row in _rows(kind)[1:]}
    assert len(pairs) < 48 and len({src for _, src in pairs}) < len(pairs)
    assert results["decoded"] == len(pairs)  # each source under each of its conditions
    assert 0.0 <= results["accuracy"] <= 100.0
    with open(os.path.join(run_dir, "eval_dev.json"), encoding="utf-8") as f:
        assert "\t" in json.load(f)["samples"][0]["source"]  # CONDITION<TAB>source


def test_evaluate_reports_each_condition_on_its_own(run):
    kind, run_dir, _ = run
    results = workflow.evaluate(run_dir, "dev")
    pairs = {(row.split("\t")[2], row.split("\t")[0]) for row in _rows(kind)[1:]}
    # A vector's text is the framework's own spelling of its floats: compare the values.
    key = (lambda c: c) if kind == "tag" else (lambda c: tuple(float(v) for v in c.split()))
    expected = {}
    for cond, _ in pairs:
        expected[key(cond)] = expected.get(key(cond), 0) + 1
    groups = results["by_condition"]
    assert {key(c): g["decoded"] for c, g in groups.items()} == expected
    # The groups partition the decoded sources: the overall share is their weighted mean.
    weighted = sum(g["accuracy"] * g["decoded"] for g in groups.values()) / len(pairs)
    assert weighted == pytest.approx(results["accuracy"], abs=1e-9)
    with open(os.path.join(run_dir, "eval_dev.json"), encoding="utf-8") as f:
        assert json.load(f)["by_condition"] == groups


def test_signatures_take_the_condition(run):
    kind, _, export_dir = run
    loaded = tf.saved_model.load(export_dir)
    for name in ("serving_default", "decode", "decode_ids"):
        spec = loaded.signatures[name].structured_input_signature[1]["condition"]
        if kind == "tag":
            assert (spec.dtype, spec.shape.as_list()) == (tf.string, [None])
        else:
            assert (spec.dtype, spec.shape.as_list()) == (tf.float32, [None, 3])
    if kind == "tag":
        assert [t.decode() for t in loaded.condition_tags().numpy()] == ["cp", "rev"]


def test_export_equals_the_framework_and_the_condition_reaches_the_model(run):
    kind, run_dir, export_dir = run
    first, second = _conditions(kind)
    lines = [f"{c}\t{w}" for w in WORDS for c in (first, second)]
    framework = workflow.predict_lines(run_dir, lines)
    assert workflow.predict_lines(export_dir, lines) == framework
    loaded = tf.saved_model.load(export_dir)
    text = tf.constant(WORDS)

    def condition(value):
        if kind == "tag":
            return tf.constant([value] * len(WORDS))
        vector = [float(v) for v in value.split()]
        return tf.constant([vector] * len(WORDS), tf.float32)

    served = loaded.signatures["serving_default"](text=text, condition=condition(first))
    assert [o.decode() for o in served["output"].numpy()] == framework[0::2]
    again = loaded.translate(text, condition(second))  # Python: the second argument
    assert [o.decode() for o in again["output"].numpy()] == framework[1::2]
    # The two conditions give the same words other log-probabilities: it reaches the model.
    scores = [loaded.translate(text, condition(c))["log_probs"].numpy() for c in (first, second)]
    assert np.max(np.abs(scores[0] - scores[1])) > 1e-4


def test_bad_conditions_are_refused(run, tmp_path):
    kind, run_dir, export_dir = run
    with pytest.raises(KerastxError, match=r"in\.txt:2: the model takes a condition; give"):
        good = "cp\ta" if kind == "tag" else "1 2 3\ta"
        predict.split_conditions([good, "a b"], 3 if kind == "vector" else 0, None, "in.txt")
    loaded = tf.saved_model.load(export_dir)
    if kind == "tag":
        for path in (run_dir, export_dir):
            with pytest.raises(KerastxError, match=r"input line 1: condition 'xx' is not a tag"):
                workflow.predict_lines(path, ["xx\ta b"])
        with pytest.raises(tf.errors.InvalidArgumentError, match="tags: cp, rev"):
            loaded.signatures["serving_default"](
                text=tf.constant(["a", "b"]), condition=tf.constant(["cp", "de"])
            )
    else:
        for path in (run_dir, export_dir):
            with pytest.raises(KerastxError, match=r"input line 1: condition '1 2': expected 3"):
                workflow.predict_lines(path, ["1 2\ta b"])
            with pytest.raises(KerastxError, match="'nan' is not a finite"):
                workflow.predict_lines(path, ["1 nan 2\ta b"])
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
            loaded.signatures["serving_default"](
                text=tf.constant(["a"]), condition=tf.constant([[0.0, np.inf, 1.0]])
            )


def test_a_conditioned_decoder_traces_once_for_every_batch_shape(run):
    kind, run_dir, _ = run
    loaded = runs.load_run(run_dir)
    settings = inference.settings_from_config(loaded.cfg.decoding)
    decoder = inference.Decoder(loaded.model, loaded.task, settings)
    for rows, width in ((3, 2), (5, 4), (2, 6), (7, 3), (4, 5)):
        inputs = {"source_ids": tf.fill([rows, width], 4), "target_ids": tf.fill([rows, 2], 4)}
        if kind == "tag":
            inputs["condition"] = tf.constant([i % 2 for i in range(rows)], tf.int32)
        else:
            inputs["condition"] = tf.constant([_vector(i) for i in range(rows)], tf.float32)
        assert decoder(inputs).ids.shape[0] == rows
    # One graph for all shapes: the evaluation of a multilingual model retraced per batch.
    assert decoder._fn_condition.experimental_get_tracing_count() == 1
