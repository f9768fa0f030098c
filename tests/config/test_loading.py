"""Loading experiments: YAML 1.2 scalars, merging, base files, overrides, run-dir config."""

import glob
import json
import os

import jsonschema
import pytest

from kerastx.cli import main
from kerastx.config import (
    ConfigError,
    ExperimentConfig,
    diff_from_defaults,
    explain,
    json_schema,
    load_experiment,
    typed,
    write_resolved,
    yamlio,
)

DATA = "data:\n  train:\n    - type: synthetic\n"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(tmp_path, text, overrides=None, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_experiment([str(path)], overrides)


def test_yaml12_scalars_are_what_the_user_meant():
    data, _ = yamlio.loads("a: 1e-4\nb: no\nc: 010\nd: 1:30\ne: .inf\nf: 0x1F\ng: ~\nh: True\n")
    assert data == {
        "a": 1e-4,
        "b": "no",
        "c": 10,
        "d": "1:30",
        "e": float("inf"),
        "f": 31,
        "g": None,
        "h": True,
    }


def test_yaml_1_1_booleans_become_booleans_only_where_a_boolean_is_expected(tmp_path):
    cfg, _ = _load(
        tmp_path,
        "data:\n  train: [{type: synthetic}]\n  shared_vocab: yes\n"
        "  source_tokenizer: {lowercase: off}\nname: no\nexport: {enabled: no}\n",
    )
    assert cfg.data.shared_vocab is True
    assert cfg.data.source_tokenizer.lowercase is False
    assert cfg.export.enabled is False
    assert cfg.name == "no"


def test_numbers_in_scientific_notation_and_integral_floats(tmp_path):
    cfg, _ = _load(tmp_path, DATA + "training:\n  learning_rate: 1e-4\n  train_steps: 1e5\n")
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.training.train_steps == 100000
    assert isinstance(cfg.training.train_steps, int)


def test_small_alias_use_still_works(tmp_path):
    cfg, _ = _load(
        tmp_path,
        "data:\n  train:\n    - &corpus {type: synthetic, num_examples: 7}\n"
        "  dev: *corpus\n  test: *corpus\nmodel:\n  d_model: &width 64\n  ffn_dim: *width\n",
    )
    assert cfg.data.dev.num_examples == cfg.data.test.num_examples == 7
    assert cfg.model.ffn_dim == 64


def test_length_caps_left_at_their_default_follow_a_smaller_model_max_length(tmp_path):
    cfg, prov = _load(tmp_path, DATA + "model:\n  max_length: 64\n")
    assert (cfg.data.max_source_length, cfg.data.max_target_length) == (64, 64)
    assert cfg.decoding.max_length == 64
    assert not prov.explicit(("decoding", "max_length"))
    cfg, _ = _load(tmp_path, DATA + "model:\n  max_length: 64\ndecoding:\n  max_length: 32\n")
    assert cfg.decoding.max_length == 32  # a value the user set is kept
    cfg, _ = _load(tmp_path, DATA + "model:\n  max_length: 2048\n")
    assert cfg.decoding.max_length == 256  # a larger model leaves the defaults alone


def test_defaults_fill_everything_else(tmp_path):
    cfg, prov = _load(tmp_path, DATA)
    assert cfg.name == "exp"
    assert cfg.run_dir == os.path.join("runs", "exp")
    assert cfg.model.d_model == 512 and cfg.training.optimizer == "adam"
    assert cfg.data.train[0].num_examples == 10000
    assert prov.explicit(("data", "train")) and not prov.explicit(("model",))


def test_files_merge_left_to_right_and_overrides_win(tmp_path):
    (tmp_path / "a.yaml").write_text(DATA + "model:\n  d_model: 64\n  num_heads: 4\n")
    (tmp_path / "b.yaml").write_text("model:\n  d_model: 32\ntraining:\n  train_steps: 7\n")
    cfg, prov = load_experiment(
        [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")],
        ["training.train_steps=9", "model.activation=gelu"],
    )
    assert (cfg.model.d_model, cfg.model.num_heads) == (32, 4)
    assert cfg.training.train_steps == 9 and cfg.model.activation == "gelu"
    assert cfg.name == "b"
    assert prov.locations[("model", "d_model")] == (str(tmp_path / "b.yaml"), 2)
    assert prov.locations[("model", "num_heads")] == (str(tmp_path / "a.yaml"), 6)


def test_base_chain_is_merged_before_the_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text(DATA + "model: {d_model: 64, num_heads: 2}\n")
    (tmp_path / "base" / "mid.yaml").write_text("base: root.yaml\nmodel: {num_heads: 4}\n")
    cfg, prov = _load(tmp_path, "base: base/mid.yaml\nmodel: {ffn_dim: 99}\n")
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.model.ffn_dim) == (64, 4, 99)
    assert [os.path.basename(f) for f in prov.files] == ["root.yaml", "mid.yaml", "exp.yaml"]


def test_list_values_replace_and_list_items_can_be_overridden(tmp_path):
    (tmp_path / "a.yaml").write_text(DATA + "evaluation: {metrics: [wer, per]}\n")
    cfg, _ = load_experiment(
        [str(tmp_path / "a.yaml")],
        [
            "evaluation.metrics=[bleu]",
            "data.train[0].num_examples=5",
            "distribution.strategy=one_device",
            "distribution.devices=['/cpu:0']",
        ],
    )
    assert cfg.evaluation.metrics == ["bleu"]
    assert cfg.data.train[0].num_examples == 5
    assert cfg.distribution.devices == ["/cpu:0"]


def test_override_of_a_missing_list_item(tmp_path):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, DATA, ["data.train[3].num_examples=5"])
    assert str(info.value) == "--set data.train[3].num_examples=5: data.train[3] does not exist"


def test_override_string_keeps_text_and_null_clears(tmp_path):
    cfg, _ = _load(
        tmp_path, DATA + "training: {clip_norm: 2.0}\n", ["name=no", "training.clip_norm=null"]
    )
    assert cfg.name == "no" and cfg.training.clip_norm is None


def test_resolved_config_round_trips_and_resume_checks_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = _load(tmp_path, DATA + "model: {d_model: 64, num_heads: 4}\n")
    path = write_resolved(cfg)
    assert path == os.path.join("runs", "exp", "config.yaml")
    again, _ = load_experiment([path])
    assert typed.to_data(again) == typed.to_data(cfg)
    # A resume-safe change (more steps, another strategy) is accepted...
    cfg2, _ = _load(
        tmp_path,
        DATA + "model: {d_model: 64, num_heads: 4}\n",
        ["training.train_steps=5", "distribution.strategy=mirrored"],
    )
    write_resolved(cfg2)
    # ...a change of what is trained is refused once the run has a checkpoint, naming
    # each field (without one, the changed config replaces the old: tests/train/test_run_dir.py).
    (tmp_path / "runs" / "exp" / "checkpoints").mkdir()
    (tmp_path / "runs" / "exp" / "checkpoints" / "checkpoint").write_text("")
    cfg3, _ = _load(
        tmp_path, DATA + "model: {d_model: 32, num_heads: 4}\n", ["training.learning_rate=0.5"]
    )
    with pytest.raises(ConfigError) as info:
        write_resolved(cfg3)
    assert str(info.value) == (
        "runs/exp/config.yaml: cannot resume this run with a changed config "
        "(model.d_model: 64 -> 32; training.learning_rate: 0.001 -> 0.5); restore those "
        "values, or use a new run_dir"
    )


def test_every_field_is_documented_with_a_unit_where_numeric():
    for path, fld, tp in typed.walk(ExperimentConfig):
        assert fld.metadata["doc"].strip(), path
        inner, _ = typed._unwrap_optional(tp)
        if inner in (int, float):
            assert fld.metadata["unit"], f"{'.'.join(path)} needs a unit"
    text = explain()
    assert "data.batch_size" in text and "[tokens or examples (see batch_unit)]" in text
    assert "training.train_steps" in text and "[steps]" in text


def test_explain_shows_values_that_differ(tmp_path):
    cfg, _ = _load(tmp_path, DATA + "model: {d_model: 64, num_heads: 4}\n")
    line = next(ln for ln in explain(cfg).splitlines() if ln.startswith("model.d_model "))
    assert "= 64 (default 512)" in line and "[units]" in line


def test_diff_from_defaults_lists_only_changes(tmp_path):
    cfg, _ = _load(tmp_path, DATA + "model: {d_model: 64, num_heads: 4}\n")
    assert diff_from_defaults(cfg) == {
        "name": "exp",
        "run_dir": os.path.join("runs", "exp"),
        "data": {"train": [{"type": "synthetic"}]},
        "model": {"d_model": 64, "num_heads": 4},
    }


def test_schema_accepts_every_shipped_experiment_and_rejects_unknown_keys():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    files = sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "*.yaml"), recursive=True))
    assert files
    for path in files:
        data, _ = yamlio.load(path)
        errors = list(validator.iter_errors(data))
        assert not errors, (path, errors[0].message)
    assert list(validator.iter_errors({"modle": {}}))


def test_shipped_schema_file_is_up_to_date():
    with open(os.path.join(ROOT, "experiments", "schema.json"), encoding="utf-8") as f:
        assert json.load(f) == json_schema(), (
            "regenerate: kerastx schema -o experiments/schema.json"
        )


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml"))), ids=os.path.basename
)
def test_every_shipped_experiment_validates(path, capsys):
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# kerastx: valid (")


def test_validate_diff_and_explain_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.yaml").write_text(DATA + "model: {d_model: 64, num_heads: 4}\n")
    assert main(["validate", "e.yaml", "--diff", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "d_model: 64" in out and "ffn_dim" not in out
    assert main(["validate", "e.yaml", "--explain"]) == 0
    assert "model.ffn_dim" in capsys.readouterr().out


def test_schema_verb_writes_a_file(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "kerastx experiment"


def test_a_broken_internal_import_is_a_bug_with_its_traceback(monkeypatch):
    """An import that fails inside kerastx is a bug (exit 1, traceback), not a user error."""
    import kerastx.cli as cli

    def broken():
        raise ModuleNotFoundError("No module named 'kerastx.gone'", name="kerastx.gone")

    monkeypatch.setattr(cli, "_workflow", broken)
    with pytest.raises(ModuleNotFoundError, match="kerastx.gone"):
        main(["export", "runs/none"])
