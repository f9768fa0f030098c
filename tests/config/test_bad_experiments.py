"""A table of bad experiment files, each with the exact error the user sees."""

import textwrap
import time

import pytest

from kerastx.cli import main
from kerastx.config import ConfigError, load_experiment

# A valid minimal data section the cases build on.
DATA = """\
data:
  train:
    - type: synthetic
"""
DEV = "  dev: {type: parallel, source: d.src, target: d.tgt}\n"

# An alias bomb: 8 lines, 9 aliases a level, 8 levels (9**8 values once expanded).
BOMB = (
    "a: &a ["
    + ", ".join(["lol"] * 9)
    + "]\n"
    + "".join(
        f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefg", "bcdefgh")
    )
)

# (case id, YAML text (the file is written as bad.yaml), overrides, expected error lines)
CASES = [
    (
        "data_service_not_an_address",
        DATA + "  service: localhost\n",
        [],
        [
            "bad.yaml:4: data.service: 'localhost' is not a dispatcher address; write it as "
            "grpc://host:port (see `kerastx data-service`)"
        ],
    ),
    (
        "data_service_with_memory_corpora",
        DATA + "  service: grpc://localhost:5000\n  stream: memory\n",
        [],
        [
            "bad.yaml:4: data.service: a tf.data service feeds streamed corpora only; set "
            "data.stream: stream (or auto), or leave data.service out"
        ],
    ),
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
        # A list-valued key of another corpus type set away from its default (the
        # resolved config.yaml writes every key, defaults included, and reloads).
        "corpus_list_key_not_read",
        "data:\n  train:\n    - type: parallel\n      source: a\n      target: b\n"
        "      languages: [de]\n",
        [],
        [
            "bad.yaml:6: data.train[0].languages: not read by corpus type 'parallel' "
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
        "length_set_above_a_set_model_max_length_names_both_keys",
        DATA + "model:\n  max_length: 32\ndecoding:\n  max_length: 64\n",
        [],
        [
            "bad.yaml:7: decoding.max_length: must be <= model.max_length "
            "(32, set at bad.yaml:5); got 64"
        ],
    ),
    (
        "length_set_above_the_default_model_max_length",
        DATA + "  max_source_length: 2000\n",
        [],
        [
            "bad.yaml:4: data.max_source_length: must be <= model.max_length "
            "(1024, the default); got 2000"
        ],
    ),
    (
        "length_override_above_a_model_max_length_override",
        DATA,
        ["model.max_length=100", "data.max_target_length=200"],
        [
            "--set data.max_target_length=200: data.max_target_length: must be <= "
            "model.max_length (100, set by --set model.max_length=100); got 200"
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
        DATA + DEV + "evaluation:\n  metrics: [accuracy]\n  best_metric: bleu\n",
        [],
        [
            "bad.yaml:7: evaluation.best_metric: 'bleu' is not computed for this experiment "
            "(model type 'seq2seq', evaluation.metrics=['accuracy']); it computes: loss, "
            "perplexity, token_accuracy, accuracy"
        ],
    ),
    (
        "early_stopping_on_a_metric_never_computed",
        DATA + DEV + "evaluation:\n  early_stopping_patience: 3\n",
        ["evaluation.best_metric=wer"],
        [
            "--set evaluation.best_metric=wer: evaluation.best_metric: 'wer' is not computed "
            "for this experiment (model type 'seq2seq', evaluation.metrics=['bleu', 'chrf']); "
            "it computes: loss, perplexity, token_accuracy, bleu, chrf"
        ],
    ),
    (
        "early_stopping_without_a_dev_set",
        DATA + "evaluation:\n  early_stopping_patience: 3\n",
        [],
        [
            "bad.yaml:5: evaluation.early_stopping_patience: early stopping acts on dev-set "
            "evaluations, but data.dev is not set (nothing is evaluated during training); add "
            "a data.dev corpus or set it to 0"
        ],
    ),
    (
        "best_metric_without_a_dev_set",
        DATA + "evaluation:\n  best_metric: perplexity\n",
        [],
        [
            "bad.yaml:5: evaluation.best_metric: 'perplexity' picks the best checkpoint on the "
            "dev set, but data.dev is not set (no best checkpoint can be chosen); add a data.dev "
            "corpus or remove the key"
        ],
    ),
    (
        "metric_the_family_does_not_compute",
        "data:\n  train:\n    - {type: labelled, path: x.tsv}\n"
        "model:\n  type: encoder_classifier\nevaluation:\n  metrics: [bleu]\n",
        [],
        [
            "bad.yaml:7: evaluation.metrics: metric 'bleu' is not computed by model type "
            "'encoder_classifier' (use: accuracy, macro_f1)"
        ],
    ),
    (
        "yaml_alias_bomb",
        BOMB,
        [],
        [
            "bad.yaml:8: h: YAML aliases expand this value to 48427561 values, over the "
            "limit of 100000 in one file"
        ],
    ),
    (
        "yaml_nested_too_deep",
        DATA + "name: " + "[" * 70 + "]" * 70 + "\n",
        [],
        [
            "bad.yaml:4: YAML nested more than 64 levels deep; an experiment is a few "
            "levels of sections"
        ],
    ),
    (
        "integer_too_long",
        DATA + "seed: " + "9" * 101 + "\n",
        [],
        [
            "bad.yaml:4: an integer of 101 characters is too long (at most 100; quote it "
            "if it is text)"
        ],
    ),
    (
        "integer_beyond_64_bits",
        DATA + "model:\n  d_model: 9223372036854775808\n",
        [],
        [
            "bad.yaml:5: model.d_model: must be <= 9223372036854775807 (a 64-bit integer); "
            "got 9223372036854775808"
        ],
    ),
    (
        "seed_negative",
        DATA + "seed: -5\n",
        [],
        ["bad.yaml:4: seed: must be >= 0; got -5"],
    ),
    (
        "seed_too_large",
        DATA + "seed: 99999999999999999999\n",
        [],
        ["bad.yaml:4: seed: must be <= 4294967295; got 99999999999999999999"],
    ),
    (
        "decoding_seed_beyond_int32",
        DATA + "decoding:\n  seed: 2147483648\n",
        [],
        ["bad.yaml:5: decoding.seed: must be <= 2147483647; got 2147483648"],
    ),
    (
        "number_overflowing_to_infinity",
        DATA + "training:\n  learning_rate: 1e999\n",
        [],
        ["bad.yaml:5: training.learning_rate: must be a finite number; got inf"],
    ),
    (
        "yaml_infinity_and_nan",
        DATA + "decoding:\n  temperature: .inf\n  length_penalty: .NaN\n"
        "training:\n  clip_norm: -.Inf\n",
        [],
        [
            "bad.yaml:8: training.clip_norm: must be a finite number; got -inf",
            "bad.yaml:6: decoding.length_penalty: must be a finite number; got nan",
            "bad.yaml:5: decoding.temperature: must be a finite number; got inf",
        ],
    ),
    (
        "override_infinity",
        DATA,
        ["training.learning_rate=.inf"],
        [
            "--set training.learning_rate=.inf: training.learning_rate: must be a finite "
            "number; got inf"
        ],
    ),
    (
        "override_into_a_list_item_that_is_not_a_mapping",
        "data:\n  train: [abc]\n",
        ["data.train[0].type=x"],
        [
            "--set data.train[0].type=x: data.train[0].type: must be one of: parallel, tsv, "
            "tfrecord, text, labelled, synthetic, cmudict, gettext, stdlib; got 'x'"
        ],
    ),
    (
        "override_creating_a_section_is_located_at_the_override",
        DATA,
        ["data.dev.type=parallel"],
        [
            "--set data.dev.type=parallel: data.dev.source: missing required key for corpus "
            "type 'parallel'",
            "--set data.dev.type=parallel: data.dev.target: missing required key for corpus "
            "type 'parallel'",
        ],
    ),
    (
        "a_problem_repeated_in_a_list_is_reported_once",
        DATA + "evaluation:\n  metrics: [blue, blue]\n",
        [],
        [
            "bad.yaml:5: evaluation.metrics: unknown metric 'blue' (use: wer, per, bleu, chrf, "
            "accuracy, placeholders)"
        ],
    ),
    (
        "range_error_and_cross_field_error_together",
        DATA + "model:\n  dropout: 1.5\n  d_model: 100\n  num_heads: 8\n",
        [],
        [
            "bad.yaml:5: model.dropout: must be < 1; got 1.5",
            "bad.yaml:7: model.num_heads: d_model (100) must be divisible by num_heads (8)",
        ],
    ),
    (
        "type_errors_in_a_corpus_and_a_rule_of_another",
        "data:\n  train:\n    - {type: synthetic, num_examples: 0}\n"
        "    - {type: parallel, source: a.txt}\ntraining:\n  weight_decay: 0.1\n",
        [],
        [
            "bad.yaml:3: data.train[0].num_examples: must be >= 1; got 0",
            "bad.yaml:4: data.train[1].target: missing required key for corpus type 'parallel'",
            "bad.yaml:6: training.weight_decay: only the adamw optimizer applies weight decay; "
            "optimizer is 'adam'",
        ],
    ),
    (
        "rules_of_a_family_skipped_when_the_model_type_failed",
        DATA + "model:\n  type: seq2sq\n  d_model: 100\nevaluation:\n  best_metric: blue\n",
        [],
        [
            "bad.yaml:5: model.type: must be one of: seq2seq, decoder_lm, encoder_classifier; "
            "got 'seq2sq' (did you mean 'seq2seq'?)",
            "bad.yaml:6: model.num_heads: d_model (100) must be divisible by num_heads (8)",
        ],
    ),
    (
        "bad_name_and_a_range_error",
        DATA + "name: my run\nseed: -1\n",
        [],
        [
            "bad.yaml:5: seed: must be >= 0; got -1",
            "bad.yaml:4: name: use letters, digits, '_', '-', '.' only; got 'my run'",
        ],
    ),
    (
        "unknown_metric",
        DATA + "evaluation:\n  metrics: [bleux]\n",
        [],
        [
            "bad.yaml:5: evaluation.metrics: unknown metric 'bleux' "
            "(use: wer, per, bleu, chrf, accuracy, placeholders)"
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


def test_alias_bomb_is_refused_at_once_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text(BOMB)
    start = time.perf_counter()
    assert main(["validate", "bomb.yaml"]) == 2
    assert time.perf_counter() - start < 1.0  # before: minutes and over 2 GB
    assert capsys.readouterr().err.splitlines() == [
        "kerastx validate: error: bomb.yaml:8: h: YAML aliases expand this value to 48427561 "
        "values, over the limit of 100000 in one file"
    ]


def test_range_and_cross_field_errors_reported_together_by_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(DATA + "seed: -1\nmodel:\n  d_model: 100\n")
    assert main(["validate", "bad.yaml", "--set", "training.learning_rate=1e999"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "kerastx validate: error: bad.yaml:4: seed: must be >= 0; got -1",
        "kerastx validate: error: --set training.learning_rate=1e999: "
        "training.learning_rate: must be a finite number; got inf",
        "kerastx validate: error: bad.yaml:6: model.num_heads: d_model (100) must be "
        "divisible by num_heads (8)",
    ]
