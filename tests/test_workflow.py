"""The Python API (`kerastx.Experiment`): experiments from YAML, dicts and configs;
train, evaluate, predict and export return plain Python values."""

import os
import shutil

import pytest
import yaml

import kerastx
from kerastx import workflow
from kerastx.config import ConfigError, load_experiment
from tests import trained_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY = os.path.join(ROOT, "experiments", "copy_task.yaml")


def test_keyword_paths_and_strings_override_like_set(tmp_path):
    exp = kerastx.Experiment.from_yaml(
        COPY,
        overrides=["model.d_model=48"],
        run_dir=str(tmp_path / "r"),
        training__train_steps=7,
        training__learning_rate=1e-3,
        evaluation__metrics=["accuracy"],
        data__dev=None,
    )
    cfg = exp.cfg
    assert (cfg.model.d_model, cfg.training.train_steps) == (48, 7)
    assert cfg.training.learning_rate == 1e-3 and cfg.data.dev is None
    assert exp.run_dir == str(tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown key 'training.train_step'"):
        kerastx.Experiment.from_yaml(COPY, training__train_step=7)


def test_from_dict_equals_the_same_yaml(tmp_path):
    with open(COPY) as f:
        data = yaml.safe_load(f)
    data["run_dir"] = str(tmp_path / "r")
    from_dict = kerastx.Experiment.from_dict(data, training__train_steps=9).cfg
    path = tmp_path / "copy_task.yaml"
    path.write_text(yaml.safe_dump(data))
    expected, _ = load_experiment([str(path)], ["training.train_steps=9"])
    expected.name = from_dict.name  # the name comes from the file name
    assert from_dict == expected
    with pytest.raises(ConfigError, match="model.num_heads: expected an integer"):
        kerastx.Experiment.from_dict({**data, "model": {"num_heads": "two"}})


def test_train_evaluate_predict_export_return_plain_values(tmp_path_factory, tmp_path):
    run_dir = str(tmp_path / "copy")
    shutil.copytree(trained_runs.copy_run(tmp_path_factory.getbasetemp()), run_dir)
    exp = kerastx.Experiment.from_yaml(os.path.join(run_dir, "config.yaml"), run_dir=run_dir)
    # A finished run: train() has nothing to do and says so.
    done = exp.train()
    assert done["step"] == 150 and "run is complete" in done["complete"]
    results = exp.evaluate("test")
    assert isinstance(results["accuracy"], float) and results["split"] == "test"
    assert results == workflow.evaluate(run_dir, "test") | {"decoding": results["decoding"]}
    texts = ["a b c", "d e"]
    outputs = exp.predict(texts)
    assert outputs == workflow.predict_lines(run_dir, texts)
    assert all(isinstance(o, str) for o in outputs)
    assert len(exp.predict(texts, strategy="beam", beam_size=2, n_best=2)) == 4
    out_dir = exp.export(str(tmp_path / "exported"))
    assert out_dir == str(tmp_path / "exported")
    assert workflow.predict_lines(out_dir, texts) == outputs


def test_train_from_python_trains_and_reports(tmp_path):
    exp = kerastx.Experiment.from_yaml(
        COPY,
        run_dir=str(tmp_path / "r"),
        training__train_steps=8,
        training__log_every=4,
        training__checkpoint_every=8,
        evaluation__every=0,
        export__enabled=False,
    )
    result = exp.train()
    assert result["step"] == 8 and result["complete"] is None
    assert set(result["test"]) >= {"loss", "accuracy", "decoded"}
    assert "export" not in result


def test_loading_a_run_whose_model_differs_names_the_first_variable(tmp_path_factory, tmp_path):
    import json

    from kerastx import runs
    from kerastx.train.checkpoints import ManifestMismatchError

    run_dir = str(tmp_path / "copy")
    shutil.copytree(trained_runs.copy_run(tmp_path_factory.getbasetemp()), run_dir)
    path = os.path.join(run_dir, "checkpoints", "variables.json")
    with open(path) as f:
        manifest = json.load(f)
    entry = manifest["variables"][3]
    entry["shape"] = [s + 1 for s in entry["shape"]]
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(
        ManifestMismatchError, match=r"best/best-150: variable 3 is .* in the checkpoint"
    ):
        runs.load_run(run_dir)
