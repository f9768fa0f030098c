"""One table of bad inputs (config, data, command line, run directory), each run through the
real command line (`kerastx.cli.main`) with its exact message and exit code.

Every case writes its files into an empty temporary directory (the working directory of
the case), runs one verb, and compares the exit code and every `kerastx <verb>: error:` /
`warning:` line of stderr with the expected lines (`{tmp}` stands for that directory). No
case may print a traceback. The config cases of `tests/config/test_bad_experiments.py`
are part of the table (run here through `kerastx validate`); the cases below add data,
command-line and run-directory faults.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap

import pytest

from kerastx import cli
from tests.config.test_bad_experiments import CASES as CONFIG_CASES

# A seq2seq experiment on two tiny parallel files; cases add or replace keys.
PAIRS = ["cat", "dog", "bird", "horse", "ox", "emu", "yak", "gnu"]
EXP = """\
name: exp
run_dir: run
seed: 1
data:
  train:
    - type: parallel
      source: src.txt
      target: tgt.txt
  batch_size: 64
  max_source_length: 16
  max_target_length: 16
model:
  d_model: 16
  num_heads: 2
  ffn_dim: 32
  num_encoder_layers: 1
  num_decoder_layers: 1
  max_length: 32
training:
  train_steps: 2
  warmup_steps: 1
  log_every: 1
  checkpoint_every: 2
evaluation:
  every: 0
export:
  enabled: false
decoding:
  max_length: 32
"""


def _lines(words) -> str:
    return "".join(w + "\n" for w in words)


SOURCES = _lines(PAIRS)
TARGETS = _lines(" ".join(w.upper()) for w in PAIRS)


def _exp(extra: str = "", data_extra: str = "") -> dict:
    """The experiment files (exp.yaml, src.txt, tgt.txt), with YAML appended."""
    text = EXP.replace("  batch_size: 64\n", "  batch_size: 64\n" + data_extra) + extra
    return {"exp.yaml": text, "src.txt": SOURCES, "tgt.txt": TARGETS}


@dataclasses.dataclass
class Case:
    id: str
    argv: list
    code: int
    lines: list
    files: dict = dataclasses.field(default_factory=dict)
    # Exact lines unless `match` is true: then each expected line is a regular expression.
    match: bool = False


def _config_case(case) -> Case:
    name, text, overrides, expected = case
    argv = ["validate", "bad.yaml"]
    for o in overrides:
        argv += ["--set", o]
    return Case(
        "config_" + name,
        argv,
        2,
        [f"kerastx validate: error: {line}" for line in expected],
        files={"bad.yaml": text},
    )


CASES = [_config_case(c) for c in CONFIG_CASES] + [
    # -- config, through the command line ----------------------------------------------
    Case(
        "config_file_missing",
        ["validate", "nope.yaml"],
        2,
        ["kerastx validate: error: nope.yaml: file not found"],
    ),
    Case(
        "set_without_equals",
        ["validate", "exp.yaml", "--set", "model.d_model"],
        2,
        [
            "kerastx validate: error: --set model.d_model: expected key=value, "
            "e.g. model.num_heads=4"
        ],
        files=_exp(),
    ),
    Case(
        "set_unknown_key",
        ["validate", "exp.yaml", "--set", "training.lerning_rate=1"],
        2,
        [
            "kerastx validate: error: --set training.lerning_rate=1: unknown key "
            "'training.lerning_rate' (did you mean 'learning_rate'?)"
        ],
        files=_exp(),
    ),
    Case(
        "yaml_syntax_error",
        ["validate", "exp.yaml"],
        2,
        [
            "kerastx validate: error: exp.yaml:3: YAML syntax error: expected ',' or '}', "
            "but got ':'"
        ],
        files={"exp.yaml": "name: a\nmodel: {d_model: 3\nseed: [\n"},
    ),
    Case(
        "config_best_metric_not_computed_by_the_task",
        ["validate", "exp.yaml"],
        2,
        [
            "kerastx validate: error: exp.yaml:26: evaluation.best_metric: 'wer' is not "
            "computed for this experiment (model type 'seq2seq', evaluation.metrics=['bleu', "
            "'chrf']); it computes: loss, perplexity, token_accuracy, bleu, chrf"
        ],
        files=_exp()
        | {"exp.yaml": EXP.replace("  every: 0\n", "  every: 0\n  best_metric: wer\n")},
    ),
    # -- data ----------------------------------------------------------------------------
    Case(
        "data_file_missing",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: tgt.txt: file not found"],
        files={"exp.yaml": EXP, "src.txt": SOURCES},
    ),
    Case(
        "data_file_empty",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: tgt.txt: file is empty"],
        files={"exp.yaml": EXP, "src.txt": SOURCES, "tgt.txt": ""},
    ),
    Case(
        "data_lines_not_aligned",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: src.txt: 8 lines but tgt.txt: 7 lines; "
            "source and target files must be line-aligned"
        ],
        files={"exp.yaml": EXP, "src.txt": SOURCES, "tgt.txt": _lines(PAIRS[:7])},
    ),
    Case(
        "data_invalid_utf8",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: src.txt:2: invalid UTF-8 (byte 0xff at "
            "column 2); fix the file or set data.invalid_utf8: replace"
        ],
        files={"exp.yaml": EXP, "src.txt": b"cat\nd\xffog\n" + SOURCES[8:].encode()}
        | {"tgt.txt": _lines(["A"] * 7)},
    ),
    Case(
        "data_nul_byte",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: tgt.txt:1: NUL byte at column 2; is this a binary file?"],
        files={"exp.yaml": EXP, "src.txt": "a\n", "tgt.txt": b"A\x00B\n"},
    ),
    Case(
        "data_too_long_error_policy",
        ["data-stats", "exp.yaml", "--set", "data.length_policy=error"],
        2,
        [
            "kerastx data-stats: error: src.txt:2: source is 21 tokens with EOS, over "
            "data.max_source_length=16 (data.length_policy: error)"
        ],
        files={"exp.yaml": EXP, "src.txt": "cat\n" + "x" * 20 + "\n", "tgt.txt": "C\nX\n"},
    ),
    Case(
        "data_vocab_missing",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: v.txt: vocabulary file not found"],
        files=_exp(data_extra="  source_tokenizer:\n    vocab: v.txt\n"),
    ),
    Case(
        "data_vocab_without_unk",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: v.txt:4: vocabulary has no UNK: line 4 must be "
            "'<unk>' (lines 1-4 hold <pad> <s> </s> <unk>, ids 0-3); found 'a'"
        ],
        files=_exp(data_extra="  source_tokenizer:\n    vocab: v.txt\n")
        | {"v.txt": "<pad>\n<s>\n</s>\na\n"},
    ),
    Case(
        "data_vocab_duplicate",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: v.txt:6: duplicate vocabulary entry 'a' (first on line 5)"],
        files=_exp(data_extra="  source_tokenizer:\n    vocab: v.txt\n")
        | {"v.txt": "<pad>\n<s>\n</s>\n<unk>\na\na\n"},
    ),
    Case(
        "data_tsv_missing_column",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: d.tsv:1: no column 'source' in the header (columns: src, tgt)"
        ],
        files={
            "exp.yaml": EXP.replace(
                "    - type: parallel\n      source: src.txt\n      target: tgt.txt\n",
                "    - type: tsv\n      path: d.tsv\n",
            ),
            "d.tsv": "src\ttgt\na\tb\n",
        },
    ),
    Case(
        "data_tsv_row_with_extra_field",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: d.tsv:3: 3 tab-separated fields, but the header has 2"],
        files={
            "exp.yaml": EXP.replace(
                "    - type: parallel\n      source: src.txt\n      target: tgt.txt\n",
                "    - type: tsv\n      path: d.tsv\n",
            ),
            "d.tsv": "source\ttarget\na\tb\nc\td\te\n",
        },
    ),
    Case(
        "data_glob_without_match",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: corpus/*.txt: no file matches this pattern"],
        files={
            "exp.yaml": EXP.replace(
                "    - type: parallel\n      source: src.txt\n      target: tgt.txt\n",
                "    - type: text\n      path: corpus/*.txt\n",
            )
            .replace("model:\n", "model:\n  type: decoder_lm\n")
            .replace("  num_encoder_layers: 1\n  num_decoder_layers: 1\n", "")
        },
    ),
    Case(
        "data_not_a_tfrecord",
        ["data-stats", "exp.yaml"],
        2,
        [
            r"kerastx data-stats: error: d\.tfrecord: not a readable TFRecord file \(.*corrupted record at 0.*\)"
        ],
        files={
            "exp.yaml": EXP.replace(
                "    - type: parallel\n      source: src.txt\n      target: tgt.txt\n",
                "    - type: tfrecord\n      path: d.tfrecord\n",
            ),
            "d.tfrecord": "this is text\n",
        },
        match=True,
    ),
    # -- command line ------------------------------------------------------------------
    Case(
        "predict_no_such_run",
        ["predict", "runs/nope", "--input", "in.txt"],
        2,
        ["kerastx predict: error: runs/nope: no such run or export directory"],
        files={"in.txt": "cat\n"},
    ),
    Case(
        "evaluate_not_a_run",
        ["evaluate", "somewhere"],
        2,
        ["kerastx evaluate: error: somewhere: not a run directory (config.yaml missing)"],
        files={"somewhere/notes.txt": "hello\n"},
    ),
    Case(
        "argparse_bad_int",
        ["predict", "run", "--beam-size", "four"],
        2,
        ["kerastx predict: error: argument --beam-size: invalid int value: 'four'"],
    ),
    Case(
        "argparse_bad_choice",
        ["evaluate", "run", "--split", "train"],
        2,
        [
            "kerastx evaluate: error: argument --split: invalid choice: 'train' "
            "(choose from 'dev', 'test')"
        ],
    ),
]


def _write(root, files: dict) -> None:
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(path, mode) as f:
            f.write(content)


def _run(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # argparse
        return stop.code


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(str(tmp_path), case.files)
    code = _run(case.argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    shown = [ln for ln in err.splitlines() if re.match(r"kerastx [\w-]+: (error|warning): ", ln)]
    expected = [line.replace("{tmp}", str(tmp_path)) for line in case.lines]
    if case.match:
        assert len(shown) == len(expected), shown
        for line, pattern in zip(shown, expected):
            assert re.fullmatch(pattern, line), (line, pattern)
    else:
        assert shown == expected
    assert code == case.code


def test_the_table_covers_every_kind_of_input():
    kinds = {c.id.split("_")[0] for c in CASES}
    assert len(CASES) >= 60, textwrap.shorten(f"{len(CASES)} cases; the issue asks for 60", 60)
    assert {"config", "data"} <= kinds
