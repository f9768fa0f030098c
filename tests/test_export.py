"""`kerastx export`: signatures, per-request settings, serving without kerastx, parity."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401 - registers the tokenizer ops of the SavedModel

from kerastx import export, inference, workflow
from kerastx.data import synthetic
from kerastx.runs import load_run
from tests import trained_runs

SETTINGS = [name for name, _ in inference.REQUEST_SETTINGS]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    return trained_runs.copy_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A copy of the copy-task run, exported by `kerastx export` (parity checked)."""
    return trained_runs.copy_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(os.path.join(exported, "export"))


def fifty_inputs() -> list[str]:
    sources, _ = synthetic.generate("copy", 44, 1, 12, 20, seed=99, split="test")
    long = " ".join(synthetic.symbol(i % 20) for i in range(40))  # cut to max_source_length
    return sources + ["", "a", "zz q", "a  b", " c d", long]


def test_saved_model_cli_lists_the_signatures_and_their_inputs(exported):
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli_path, "show", "--all", "--dir", os.path.join(exported, "export")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    blocks = {
        block.split("'", 1)[0]: block for block in shown.split("signature_def['")[1:]
    }  # signature name -> its listing
    assert {"serving_default", "decode", "decode_ids"} <= set(blocks)
    expected = {
        "serving_default": (["text"], ["output", "score"]),
        "decode": (["text", *SETTINGS], ["output", "outputs", "scores", "log_probs", "lengths"]),
        "decode_ids": (["source_ids", *SETTINGS], ["ids", "scores", "log_probs", "lengths"]),
    }
    for name, (inputs, outputs) in expected.items():
        listed_in = {line.split("'")[1] for line in blocks[name].splitlines() if "inputs['" in line}
        listed_out = {
            line.split("'")[1] for line in blocks[name].splitlines() if "outputs['" in line
        }
        assert listed_in == set(inputs), name
        assert listed_out == set(outputs), name


def test_settings_are_optional_for_python_and_inputs_of_the_signature(loaded):
    text = tf.constant(fifty_inputs()[:20])
    decode = loaded.signatures["decode"]
    assert set(decode.structured_input_signature[1]) == {"text", *SETTINGS}
    default = loaded.translate(text)
    served = loaded.signatures["serving_default"](text=text)
    np.testing.assert_array_equal(default["output"], served["output"])
    np.testing.assert_allclose(default["scores"][:, 0], served["score"], rtol=1e-6)
    # Every setting given explicitly through the signature equals the Python defaults.
    explicit = decode(
        text=text,
        beam_size=tf.constant(1),
        n_best=tf.constant(1),
        length_penalty=tf.constant(0.6),
        sampling=tf.constant(False),
        temperature=tf.constant(1.0),
        top_k=tf.constant(0),
        top_p=tf.constant(1.0),
        seed=tf.constant(0),
        max_length=tf.constant(32),
    )
    np.testing.assert_array_equal(explicit["outputs"], default["outputs"])

    assert default["outputs"].shape == (20, 1)
    beam = loaded.translate(text, beam_size=4, n_best=4, length_penalty=0.0)
    assert beam["outputs"].shape == (20, 4)
    scores = beam["scores"].numpy()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_array_equal(scores, beam["log_probs"])  # no length penalty

    top1 = loaded.translate(text, sampling=True, top_k=1, seed=5)
    np.testing.assert_array_equal(top1["outputs"], default["outputs"])
    np.testing.assert_allclose(top1["scores"], default["scores"], rtol=1e-5)
    first = loaded.translate(text, sampling=True, temperature=2.0, seed=1)
    again = loaded.translate(text, sampling=True, temperature=2.0, seed=1)
    other = loaded.translate(text, sampling=True, temperature=2.0, seed=2)
    np.testing.assert_array_equal(first["outputs"], again["outputs"])
    assert not np.array_equal(first["outputs"].numpy(), other["outputs"].numpy())

    capped = loaded.translate(text, max_length=3)
    assert np.all(capped["lengths"].numpy() <= 3)
    assert max(len(t.split()) for t in capped["output"].numpy()) <= 3
    assert max(len(t.split()) for t in default["output"].numpy()) > 3  # the cap did cut

    source_ids = inference.encode_source(loaded.source_tokenizer, text, 32)
    ids = loaded.decode_ids(source_ids, beam_size=4, n_best=2)
    words = loaded.translate(text, beam_size=4, n_best=2)
    detok = loaded.target_tokenizer.detokenize_dense(ids["ids"][:, 1])
    np.testing.assert_array_equal(detok, words["outputs"][:, 1])


def test_the_saved_model_holds_only_tensorflow_state(loaded):
    assert not hasattr(loaded, "model")  # no Keras object, only its variables
    functions = {"translate", "translate_default", "decode_ids"}
    for name in functions:
        assert isinstance(getattr(loaded, name), tf.types.experimental.PolymorphicFunction), name
    assert all(isinstance(v, tf.Variable) for v in loaded.model_variables)
    for tokenizer in (loaded.source_tokenizer, loaded.target_tokenizer):
        public = {k for k in vars(tokenizer) if not k.startswith("_")}
        assert public == {"tokenize", "detokenize_dense", "detokenize_ragged"}
    with open(loaded.config_file.asset_path.numpy(), encoding="utf-8") as f:
        assert "model:" in f.read()


def test_parity_check_fails_when_the_model_differs(exported):
    run = load_run(exported)
    run.model.variables[0].assign(run.model.variables[0] * 0.0)  # the source embeddings
    with pytest.raises(export.ExportParityError, match="export parity check failed on"):
        export.parity_check(os.path.join(exported, "export"), run.task, run.model, run.data, 20)


SERVE = r"""
import json, os, sys
# Hide kerastx: drop the editable install's finder and the project root.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
root, export_dir, inputs_path, outputs_path = sys.argv[1:]
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != root]
try:
    import kerastx
    hidden = False
except ModuleNotFoundError:
    hidden = True
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops

with open(inputs_path, encoding="utf-8") as f:
    lines = json.load(f)
model = tf.saved_model.load(export_dir)
out = model.signatures["serving_default"](text=tf.constant(lines))
beam = model.translate(tf.constant(lines), beam_size=4, n_best=2)
with open(outputs_path, "w", encoding="utf-8") as f:
    json.dump({
        "kerastx_hidden": hidden,
        "outputs": [t.decode("utf-8") for t in out["output"].numpy()],
        "scores": out["score"].numpy().tolist(),
        "beam_shape": list(beam["outputs"].shape),
    }, f)
"""


def test_serves_in_a_process_without_kerastx_after_the_checkpoints_are_deleted(
    copy_run, exported, tmp_path
):
    lines = fifty_inputs()
    assert len(lines) == 50
    run = load_run(copy_run)
    settings = inference.settings_from_config(run.cfg.decoding)
    before = run.task.predict(run.model, run.data, lines, settings, 64)
    served = str(tmp_path / "served_run")
    shutil.copytree(exported, served)
    shutil.rmtree(os.path.join(served, "checkpoints"))
    shutil.rmtree(os.path.join(served, "vocab"))  # the vocabulary travels in assets/
    with open(tmp_path / "inputs.json", "w", encoding="utf-8") as f:
        json.dump(lines, f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [os.path.join(served, "export"), str(tmp_path / "inputs.json")]
    subprocess.run(
        [sys.executable, "-I", "-c", SERVE, trained_runs.ROOT, *args, str(tmp_path / "out.json")],
        cwd=tmp_path,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=True,
        capture_output=True,
    )
    with open(tmp_path / "out.json", encoding="utf-8") as f:
        after = json.load(f)
    assert after["kerastx_hidden"]
    assert after["outputs"] == [o[0] for o in before.outputs]
    np.testing.assert_allclose(after["scores"], [s[0] for s in before.scores], rtol=1e-5)
    assert after["beam_shape"] == [50, 2]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    return trained_runs.lm_run(tmp_path_factory.getbasetemp())


def test_decoder_lm_continues_a_prompt_in_the_framework_and_the_export(lm_run):
    letters = trained_runs.LETTERS
    prompts = ["c d e", "k l", "a", "p q r s"]
    expected = [trained_runs.counting_line(letters.index(p[-1]) + 1) for p in prompts]
    assert expected[0] == "f g h i j k l m n o p q r s t u v w x"
    export_dir = os.path.join(lm_run, "export")
    assert workflow.predict_lines(lm_run, prompts) == expected
    assert workflow.predict_lines(export_dir, prompts) == expected
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {"serving_default", "decode", "decode_ids"}
    assert "prompt_ids" in loaded.signatures["decode_ids"].structured_input_signature[1]
    # max_length counts prompt + continuation.
    capped = loaded.translate(tf.constant(prompts), max_length=5)["output"].numpy()
    assert [t.decode() for t in capped] == ["f g", "m n o", "b c d e", "t"]
    beam = loaded.translate(tf.constant(prompts), beam_size=3, n_best=2)
    assert beam["outputs"].shape == (4, 2)
    assert [t.decode() for t in beam["output"].numpy()] == expected


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    return trained_runs.classifier_run(tmp_path_factory.getbasetemp())


def test_classifier_export_returns_labels_and_probabilities(classifier_run):
    export_dir = os.path.join(classifier_run, "export")
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {"serving_default", "classify"}
    texts = ["a b", "c d e", "", "h a"]
    out = loaded.signatures["classify"](text=tf.constant(texts))
    probs = out["probabilities"].numpy()
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    classes = out["classes"].numpy()
    assert [c.decode() for c in classes[0]] == ["has_a", "no_a"]  # the label file's order
    best = probs.argmax(axis=1)
    assert [t.decode() for t in out["label"].numpy()] == [
        classes[i, j].decode() for i, j in enumerate(best)
    ]
    np.testing.assert_allclose(out["score"], probs.max(axis=1))
    labels = [t.decode() for t in out["label"].numpy()]
    assert workflow.predict_lines(classifier_run, texts) == labels
    assert workflow.predict_lines(export_dir, texts) == labels


def test_the_export_verb_fails_and_keeps_the_previous_export_when_parity_fails(
    exported, tmp_path, monkeypatch, capsys
):
    """`kerastx export` runs the parity check: a framework decoding that differs from the
    SavedModel's (here: one hypothesis changed) fails the verb, exit 2, one line."""
    from kerastx import cli, evaluate

    run_dir = str(tmp_path / "run")
    shutil.copytree(exported, run_dir)
    export_dir = os.path.join(run_dir, "export")
    before = os.path.getmtime(os.path.join(export_dir, "saved_model.pb"))
    decode_split = evaluate.decode_split

    def differing(*args, **kwargs):
        hyps, sources = decode_split(*args, **kwargs)
        return [hyps[0] + " x", *hyps[1:]], sources

    monkeypatch.setattr(evaluate, "decode_split", differing)
    capsys.readouterr()
    assert cli.main(["export", run_dir]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kerastx")]
    assert len(err) == 1
    assert re.fullmatch(
        r"kerastx export: error: export parity check failed on 1 of 50 examples: "
        r"'[a-t ]+': framework '[a-t ]* x' != export '[a-t ]*'",
        err[0],
    ), err
    # The previous export stays; the temporary one is gone.
    assert os.path.getmtime(os.path.join(export_dir, "saved_model.pb")) == before
    assert not os.path.exists(export_dir + ".tmp")
    other = str(tmp_path / "elsewhere")
    assert cli.main(["export", run_dir, "--output", other]) == 2
    assert not os.path.exists(other) and not os.path.exists(other + ".tmp")
