"""A table of bad experiment files, each with the exact error the user sees."""

import textwrap

import pytest

from kerastx.cli import main
from kerastx.config import ConfigError, load_experiment

# A valid minimal data section the cases build on.
DATA = """\
data:
  train:
    - type: synthetic
"""

# (case id, YAML text (the file is written as bad.yaml), overrides, expected error lines)
CASES = [
    (
        "unknown_key_with_suggestion",
        DATA + "model:\n  num_encoder_layer: 4\n",
        [],
        [
            "bad.yaml:5: model.num_encoder_layer: unknown key in model "
            "(did you mean 'num_encoder_layers'?)"
        ],
    ),
    (
        "unknown_section",
        DATA + "trainng:\n  train_steps: 10\n",
        [],
        ["bad.yaml:4: trainng: unknown key (did you mean 'training'?)"],
    ),
    (
        "wrong_type",
        DATA + "model:\n  d_model: big\n",
        [],
        ["bad.yaml:5: model.d_model: expected an integer, got the string 'big'"],
    ),
    (
        "duplicate_key",
        DATA + "model:\n  d_model: 64\n  num_heads: 4\n  d_model: 128\n",
        [],
        ["bad.yaml:7: duplicate key 'model.d_model' (first set on line 5)"],
    ),
    (
        "quoted_number",
        DATA + "training:\n  learning_rate: '1e-4'\n",
        [],
        [
            "bad.yaml:5: training.learning_rate: expected a number, got the string '1e-4' "
            "(remove the quotes to give a number)"
        ],
    ),
    (
        "yaml11_no_in_a_number",
        DATA + "training:\n  clip_norm: no\n",
        [],
        ["bad.yaml:5: training.clip_norm: expected a number, got the string 'no'"],
    ),
    (
        "missing_required_section",
        "model:\n  d_model: 64\n",
        [],
        ["bad.yaml: data: missing required key (the data section)"],
    ),
    (
        "missing_required_field",
        "data:\n  train:\n    - source: a.txt\n",
        [],
        ["bad.yaml:3: data.train[0].type: missing required key (kind of source)"],
    ),
    (
        "heads_do_not_divide_width",
        DATA + "model:\n  d_model: 100\n  num_heads: 8\n",
        [],
        ["bad.yaml:6: model.num_heads: d_model (100) must be divisible by num_heads (8)"],
    ),
    (
        "python_tag_refused",
        DATA + "name: !!python/object/apply:os.system ['echo hi']\n",
        [],
        ["bad.yaml:4: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"],
    ),
    (
        "out_of_range",
        DATA + "model:\n  dropout: 1.5\n",
        [],
        ["bad.yaml:5: model.dropout: must be < 1; got 1.5"],
    ),
    (
        "bad_choice_with_suggestion",
        DATA + "model:\n  activation: swigl\n",
        [],
        [
            "bad.yaml:5: model.activation: must be one of: relu, gelu, swiglu; got 'swigl' "
            "(did you mean 'swiglu'?)"
        ],
    ),
    (
        "yaml_syntax",
        DATA + "model:\n  d_model: [64\n",
        [],
        ["bad.yaml:6: YAML syntax error: expected ',' or ']', but got '<stream end>'"],
    ),
    (
        "key_of_another_model_type",
        DATA + "model:\n  pooling: max\n",
        [],
        [
            "bad.yaml:5: model.pooling: not used by model type 'seq2seq' "
            "(only by encoder_classifier)"
        ],
    ),
    (
        "corpus_missing_files",
        "data:\n  train:\n    - type: parallel\n      source: a.txt\n",
        [],
        ["bad.yaml:3: data.train[0].target: missing required key for corpus type 'parallel'"],
    ),
    (
        "corpus_key_not_read",
        "data:\n  train:\n    - type: parallel\n      source: a\n      target: b\n      path: c\n",
        [],
        [
            "bad.yaml:6: data.train[0].path: not read by corpus type 'parallel' "
            "(it reads: source, target)"
        ],
    ),
    (
        "integer_expected",
        DATA + "training:\n  train_steps: 1.5\n",
        [],
        ["bad.yaml:5: training.train_steps: expected an integer, got 1.5"],
    ),
    (
        "not_a_mapping",
        "- data\n- model\n",
        [],
        ["bad.yaml:1: an experiment must be a mapping of sections"],
    ),
    (
        "override_unknown_key",
        DATA,
        ["model.num_head=4"],
        ["--set model.num_head=4: unknown key 'model.num_head' (did you mean 'num_heads'?)"],
    ),
    (
        "override_wrong_type",
        DATA,
        ["training.train_steps=ten"],
        [
            "--set training.train_steps=ten: training.train_steps: expected an integer, "
            "got the string 'ten'"
        ],
    ),
    (
        "several_problems_at_once",
        DATA + "model:\n  d_model: -4\n  norm: batchnorm\n",
        [],
        [
            "bad.yaml:5: model.d_model: must be >= 1; got -4",
            "bad.yaml:6: model.norm: must be one of: layernorm, rmsnorm; got 'batchnorm'",
        ],
    ),
    (
        "share_all_needs_shared_vocab",
        DATA + "model:\n  share_embeddings: all\n",
        [],
        [
            "bad.yaml:5: model.share_embeddings: 'all' needs data.shared_vocab: true "
            "(one vocabulary for source and target)"
        ],
    ),
    (
        "rule_broken_by_a_default_names_the_set_key",
        DATA + "model:\n  max_length: 32\n",
        [],
        [
            "bad.yaml:5: data.max_source_length: must be <= model.max_length (32); got 256",
            "bad.yaml:5: data.max_target_length: must be <= model.max_length (32); got 256",
            "bad.yaml:5: decoding.max_length: must be <= model.max_length (32); got 256",
        ],
    ),
    (
        "weight_decay_needs_adamw",
        DATA + "training:\n  weight_decay: 0.01\n",
        [],
        [
            "bad.yaml:5: training.weight_decay: only the adamw optimizer applies weight decay; "
            "optimizer is 'adam'"
        ],
    ),
    (
        "bad_experiment_name",
        DATA + "name: my run\n",
        [],
        ["bad.yaml:4: name: use letters, digits, '_', '-', '.' only; got 'my run'"],
    ),
    (
        "merge_key_refused",
        DATA + "common: &c {d_model: 64}\nmodel:\n  <<: *c\n",
        [],
        ["bad.yaml:6: YAML merge keys (<<) are not supported; use `base:`"],
    ),
    (
        "best_metric_never_computed",
        DATA + "evaluation:\n  metrics: [accuracy]\n  best_metric: bleu\n",
        [],
        [
            "bad.yaml:6: evaluation.best_metric: 'bleu' is not computed for this experiment "
            "(model type 'seq2seq', evaluation.metrics=['accuracy']); it computes: loss, "
            "perplexity, token_accuracy, accuracy"
        ],
    ),
    (
        "early_stopping_on_a_metric_never_computed",
        DATA + "evaluation:\n  early_stopping_patience: 3\n",
        ["evaluation.best_metric=wer"],
        [
            "--set evaluation.best_metric=wer: evaluation.best_metric: 'wer' is not computed "
            "for this experiment (model type 'seq2seq', evaluation.metrics=['bleu', 'chrf']); "
            "it computes: loss, perplexity, token_accuracy, bleu, chrf"
        ],
    ),
    (
        "metric_the_family_does_not_compute",
        "data:\n  train:\n    - {type: labelled, path: x.tsv}\n"
        "model:\n  type: encoder_classifier\nevaluation:\n  metrics: [bleu]\n",
        [],
        [
            "bad.yaml:7: evaluation.metrics: metric 'bleu' is not computed by model type "
            "'encoder_classifier' (use: accuracy)"
        ],
    ),
    (
        "unknown_metric",
        DATA + "evaluation:\n  metrics: [bleux]\n",
        [],
        [
            "bad.yaml:5: evaluation.metrics: unknown metric 'bleux' "
            "(use: wer, per, bleu, chrf, accuracy)"
        ],
    ),
]


@pytest.mark.parametrize(
    "text,overrides,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_experiment_gives_exact_error(tmp_path, monkeypatch, text, overrides, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(["bad.yaml"], overrides)
    assert info.value.messages == expected


def test_cli_prints_one_line_per_problem_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(DATA + "model:\n  d_model: -4\n  norm: batchnorm\n")
    assert main(["validate", "bad.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "kerastx validate: error: bad.yaml:5: model.d_model: must be >= 1; got -4",
        "kerastx validate: error: bad.yaml:6: model.norm: must be one of: layernorm, "
        "rmsnorm; got 'batchnorm'",
    ]


def test_base_cycle_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n" + DATA)
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(["a.yaml"])
    assert str(info.value) == "b.yaml:1: `base:` chain loops back (a.yaml -> b.yaml -> a.yaml)"


def test_missing_base_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(DATA + "base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(["a.yaml"])
    assert str(info.value) == "a.yaml:4: base file not found: nowhere.yaml"


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        load_experiment(["does/not/exist.yaml"])
    assert str(info.value) == "does/not/exist.yaml: file not found"


def test_several_documents_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.yaml").write_text(DATA + "---\nmodel: {}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(["two.yaml"])
    assert str(info.value) == "two.yaml:5: expected one YAML document, found several"


def test_error_messages_are_single_lines():
    for _, _, _, expected in CASES:
        assert all("\n" not in line for line in expected)
    assert len(CASES) >= 12, textwrap.shorten("the issue asks for at least 12 cases", 40)
