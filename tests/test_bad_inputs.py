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
import gzip
import io
import os
import re
import shutil
import sys
import textwrap

import pytest

from kerastx import cli
from tests import trained_runs
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


def _symbols(count: int) -> str:
    """`count` tokens of the copy task's vocabulary (its max_source_length is 32)."""
    return " ".join("abcdefghijklmnopqrst"[i % 20] for i in range(count))


LONG_INPUTS = "a b\n" + _symbols(40) + "\nc d\n" + _symbols(33) + "\n"
COPY_TASK = os.path.join(trained_runs.ROOT, "experiments", "copy_task.yaml")
MACHINE = r"[0-9.]+ [KMGT]iB"  # this machine's memory, in the too-big-model lines


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
    # A copy of the tiny trained copy-task run (tests/trained_runs.py) at ./run.
    run: bool = False
    stdin: bytes | None = None
    # Files written after the run is copied (e.g. a damaged checkpoint).
    after: dict = dataclasses.field(default_factory=dict)


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
    # -- streamed corpora (data.stream: stream): the same lines, found while training --
    Case(
        "stream_lines_not_aligned",
        ["train", "exp.yaml", "--set", "data.stream=stream", "--set", "data.vocab_sample=2"],
        2,
        [
            "kerastx train: error: src.txt: 8 lines but tgt.txt: 7 lines; "
            "source and target files must be line-aligned"
        ],
        files={"exp.yaml": EXP, "src.txt": SOURCES, "tgt.txt": _lines(PAIRS[:7])},
    ),
    Case(
        "stream_nul_byte_past_the_sample",
        ["train", "exp.yaml", "--set", "data.stream=stream", "--set", "data.vocab_sample=2"],
        2,
        ["kerastx train: error: src.txt:6: NUL byte at column 2; is this a binary file?"],
        files=_exp() | {"src.txt": SOURCES.replace("emu", "e\0mu")},
    ),
    Case(
        "stream_shard_globs_differ",
        ["train", "exp.yaml", "--set", "data.stream=stream"],
        2,
        [
            "kerastx train: error: data.train[0]: source s*.txt names 2 files but target "
            "t*.txt names 1; parallel shards pair up in sorted order"
        ],
        files={
            "exp.yaml": EXP.replace("source: src.txt", "source: s*.txt").replace(
                "target: tgt.txt", "target: t*.txt"
            ),
            "s1.txt": SOURCES,
            "s2.txt": SOURCES,
            "t1.txt": TARGETS,
        },
    ),
    Case(
        "stream_weights",
        ["train", "exp.yaml", "--set", "data.stream=stream"],
        2,
        [
            "kerastx train: error: data.train[0].weight: 2.0: streamed corpora are each read "
            "in full once an epoch, so weights other than 1 are not applied; set data.stream: "
            "memory to mix corpora by weight"
        ],
        files=_exp()
        | {
            "exp.yaml": EXP.replace(
                "      target: tgt.txt\n",
                "      target: tgt.txt\n      weight: 2\n"
                "    - type: parallel\n      source: src.txt\n      target: tgt.txt\n",
            )
        },
    ),
    Case(
        "stream_synthetic",
        ["train", COPY_TASK, "--set", "data.stream=stream", "--set", "run_dir=run"],
        2,
        [
            "kerastx train: error: data.train[0]: corpus type 'synthetic' is generated in "
            "memory and cannot be streamed; set data.stream: memory (or auto)"
        ],
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
        "data_gzip_file_cut",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: src.txt: not a readable gzip file (Compressed file "
            "ended before the end-of-stream marker was reached)"
        ],
        files=_exp() | {"src.txt": gzip.compress(SOURCES.encode())[:20]},
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
            "kerastx data-stats: error: d.tsv:1: no column 'source' in the header (columns: src, "
            "tgt)"
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
            r"kerastx data-stats: error: d\.tfrecord: not a readable TFRecord file \(.*corrupted "
            r"record at 0.*\)"
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
    # -- issue 13: the cases that were wrong or unclear ---------------------------------
    Case(
        "rundir_is_root",
        ["train", "exp.yaml", "--set", "run_dir=/"],
        2,
        [
            r"kerastx train: error: run_dir=/: not a kerastx run directory: it is not empty "
            r"\(\d+ entries: .*\) and has no config.yaml written by kerastx; training would "
            r"write its config, vocabularies, checkpoints and logs into it: choose a new or "
            r"empty directory, or an earlier run to resume"
        ],
        files=_exp(),
        match=True,
    ),
    Case(
        "rundir_foreign_directory",
        ["train", "exp.yaml", "--set", "run_dir=mine"],
        2,
        [
            "kerastx train: error: run_dir=mine ({tmp}/mine): not a kerastx run directory: it "
            "is not empty (1 entry: train_log.jsonl) and has no config.yaml written by kerastx; "
            "training would write its config, vocabularies, checkpoints and logs into it: "
            "choose a new or empty directory, or an earlier run to resume"
        ],
        files=_exp() | {"mine/train_log.jsonl": '{"mine": 1}\n'},
    ),
    Case(
        "rundir_foreign_directory_for_vocab",
        ["vocab", "exp.yaml", "--set", "run_dir=mine"],
        2,
        [
            "kerastx vocab: error: run_dir=mine ({tmp}/mine): not a kerastx run directory: it "
            "is not empty (1 entry: notes.txt) and has no config.yaml written by kerastx; "
            "training would write its config, vocabularies, checkpoints and logs into it: "
            "choose a new or empty directory, or an earlier run to resume"
        ],
        files=_exp() | {"mine/notes.txt": "mine\n"},
    ),
    Case(
        "rundir_is_a_file",
        ["train", "exp.yaml", "--set", "run_dir=src.txt"],
        2,
        [
            "kerastx train: error: run_dir=src.txt ({tmp}/src.txt): exists and is not a "
            "directory; choose another"
        ],
        files=_exp(),
    ),
    Case(
        "predict_long_inputs_counted",
        ["predict", "run", "--input", "in.txt"],
        0,
        [
            "kerastx predict: warning: 2 of 4 inputs were longer than "
            "data.max_source_length=32 tokens and were cut to it (lines 2, 4)"
        ],
        files={"in.txt": LONG_INPUTS},
        run=True,
    ),
    Case(
        "predict_long_inputs_error",
        ["predict", "run", "--input", "in.txt", "--long-inputs", "error"],
        2,
        [
            "kerastx predict: error: in.txt:2: longer than data.max_source_length=32 tokens "
            "(decoding.long_inputs: error; 2 of 4 inputs: lines 2, 4); shorten them, or let "
            "them be cut with --long-inputs truncate"
        ],
        files={"in.txt": LONG_INPUTS},
        run=True,
    ),
    Case(
        "predict_n_best_with_greedy",
        ["predict", "run", "--input", "in.txt", "--n-best", "3"],
        2,
        [
            "kerastx predict: error: --n-best: not read by strategy 'greedy' "
            "(decoding.strategy of run); only by beam: choose that strategy or leave the "
            "option out"
        ],
        files={"in.txt": "a b\n"},
        run=True,
    ),
    Case(
        "predict_beam_size_0",
        ["predict", "run", "--input", "in.txt", "--strategy", "beam", "--beam-size", "0"],
        2,
        ["kerastx predict: error: --beam-size: must be >= 1; got 0"],
        files={"in.txt": "a b\n"},
        run=True,
    ),
    Case(
        "predict_top_p_5",
        ["predict", "run", "--input", "in.txt", "--strategy", "sample", "--top-p", "5"],
        2,
        ["kerastx predict: error: --top-p: must be <= 1; got 5.0"],
        files={"in.txt": "a b\n"},
        run=True,
    ),
    Case(
        "predict_stdin_invalid_utf8",
        ["predict", "run"],
        2,
        [
            "kerastx predict: error: <stdin>:2: not valid UTF-8 (byte 0xff at column 1); give "
            "UTF-8 text"
        ],
        stdin=b"a b\n\xff c\n",
        run=True,
    ),
    Case(
        "predict_checkpoint_averaged_missing",
        ["predict", "run", "--input", "in.txt", "--checkpoint", "averaged"],
        2,
        [r"kerastx predict: error: run: .*averaged.*"],
        files={"in.txt": "a b\n"},
        run=True,
        match=True,
    ),
    Case(
        "evaluate_no_readable_checkpoint",
        ["evaluate", "run", "--checkpoint", "last"],
        2,
        [
            "kerastx evaluate: warning: checkpoint run/checkpoints/ckpt-150 cannot be restored "
            "(file is too short to be an sstable)",
            "kerastx evaluate: error: run/checkpoints: no checkpoint can be restored "
            "(ckpt-150: file is too short to be an sstable)",
        ],
        run=True,
        after={"run/checkpoints/ckpt-150.index": b"garbage"},
    ),
    Case(
        "predict_output_directory_missing",
        ["predict", "run", "--input", "in.txt", "--output", "nodir/out.txt"],
        2,
        [
            "kerastx predict: error: nodir/out.txt: cannot write the output (No such file or "
            "directory); make it writable or choose another --output"
        ],
        files={"in.txt": "a b\n"},
        run=True,
    ),
    Case(
        "evaluate_cannot_write_results",
        ["evaluate", "run"],
        2,
        [
            "kerastx evaluate: error: run/eval_test.json: cannot write the results (printed "
            "above) (Is a directory); make it writable or choose another place"
        ],
        run=True,
        after={"run/eval_test.json": None, "run/eval_test.json/in_the_way.txt": "x\n"},
    ),
    Case(
        "export_cannot_write",
        ["export", "run", "--output", "in.txt/export"],
        2,
        [
            "kerastx export: error: in.txt/export: cannot write the export there: "
            "{tmp}/in.txt is not a writable directory; choose another --output"
        ],
        files={"in.txt": "a b\n"},
        run=True,
    ),
    Case(
        "score_target_longer_than_the_model",
        ["score", "run", "--source", "s.txt", "--target", "t.txt"],
        2,
        [
            "kerastx score: error: t.txt:2: the scored sequence is 41 tokens, over "
            "model.max_length=32 (the longest the model takes; 1 of 2 pairs: line 2); "
            "shorten those targets (or prompts), nothing was scored"
        ],
        files={"s.txt": "a b\nc d\n", "t.txt": "a b\n" + _symbols(40) + "\n"},
        run=True,
    ),
    Case(
        "launch_workers_0",
        ["launch", "exp.yaml", "--workers", "0"],
        2,
        ["kerastx launch: error: --workers: must be >= 1; got 0"],
        files=_exp(),
    ),
    Case(
        "train_device_missing",
        ["train", "exp.yaml", "--set", "distribution.strategy=one_device"]
        + ["--set", "distribution.devices=[/gpu:7]"],
        2,
        [
            r"kerastx train: error: distribution.devices\[0\]: '/gpu:7': no such device on "
            r"this machine; it has /cpu:0.* \(empty distribution.devices = all local GPUs, "
            r"else the CPU\)"
        ],
        files=_exp(),
        match=True,
    ),
    Case(
        "train_device_malformed",
        ["train", "exp.yaml", "--set", "distribution.strategy=one_device"]
        + ["--set", "distribution.devices=[gpu7]"],
        2,
        [
            r"kerastx train: error: distribution.devices\[0\]: 'gpu7' is not the name of one "
            r"device; write it as /gpu:0 or /cpu:0 \(this machine has /cpu:0.*\)"
        ],
        files=_exp(),
        match=True,
    ),
    Case(
        "train_tpu_missing",
        ["train", "exp.yaml", "--set", "distribution.strategy=tpu"],
        2,
        [
            "kerastx train: error: distribution.strategy=tpu: no TPU found "
            "(distribution.tpu=''): Please provide a TPU Name to connect to; set "
            "distribution.tpu to the TPU's name or grpc:// address, or use another "
            "distribution.strategy"
        ],
        files=_exp(),
    ),
    Case(
        "validate_model_too_big_warns",
        ["validate", "exp.yaml", "--set", "model.d_model=1000000000"],
        0,
        [
            r"kerastx validate: warning: model of [0-9,]+ parameters \([0-9.]+ EiB for the "
            r"weights and adam's state\), counted with the configured sizes "
            r"\(data.source_tokenizer.vocab_size=8000, data.target_tokenizer.vocab_size=8000\): "
            r"more than this machine's "
            + MACHINE
            + r" before any gradient or activation, so training will run out of memory; .*"
        ],
        files=_exp(),
        match=True,
    ),
    Case(
        "train_model_too_big",
        ["train", "exp.yaml", "--set", "model.d_model=1000000000"],
        2,
        [
            r"kerastx train: error: the model does not fit this machine: model of [0-9,]+ "
            r"parameters \([0-9.]+ EiB for the weights and adam's state\), more than its "
            + MACHINE
            + r" before any gradient or activation; make the model smaller .*"
        ],
        files=_exp(),
        match=True,
    ),
    Case(
        "train_init_from_garbage",
        ["train", COPY_TASK, "--set", "training.init_from=run", "--set", "run_dir=new"],
        2,
        [
            "kerastx train: warning: checkpoint run/checkpoints/ckpt-150 cannot be restored "
            "(file is too short to be an sstable)",
            "kerastx train: error: training.init_from: run/checkpoints: no checkpoint can be "
            "restored (ckpt-150: file is too short to be an sstable); point "
            "training.init_from at a readable checkpoint",
        ],
        run=True,
        after={"run/checkpoints/ckpt-150.index": b"garbage"},
    ),
    Case(
        "data_empty_dev_set",
        ["data-stats", "exp.yaml"],
        2,
        [
            "kerastx data-stats: error: data.dev: no example left (1 empty, dropped by "
            "data.empty_examples: drop)"
        ],
        files=_exp(data_extra="")
        | {
            "exp.yaml": EXP.replace(
                "  batch_size: 64\n",
                "  dev:\n    type: parallel\n    source: d.src\n    target: d.tgt\n"
                "  batch_size: 64\n",
            ),
            "d.src": "\n",
            "d.tgt": "A\n",
        },
    ),
    Case(
        "data_empty_line_is_an_error",
        ["data-stats", "exp.yaml", "--set", "data.empty_examples=error"],
        2,
        [
            "kerastx data-stats: error: src.txt:3: source is empty (a blank line or no token "
            "after tokenization); fix the line or set data.empty_examples: drop"
        ],
        files=_exp() | {"src.txt": "cat\ndog\n\n" + _lines(PAIRS[3:])},
    ),
    Case(
        "data_vocab_is_a_directory",
        ["data-stats", "exp.yaml"],
        2,
        ["kerastx data-stats: error: v: is a directory, not a vocabulary file"],
        files=_exp(data_extra="  source_tokenizer:\n    vocab: v\n") | {"v/x.txt": "a\n"},
    ),
    Case(
        "config_best_metric_without_dev_set",
        ["validate", "exp.yaml", "--set", "evaluation.early_stopping_patience=3"],
        2,
        [
            "kerastx validate: error: --set evaluation.early_stopping_patience=3: "
            "evaluation.early_stopping_patience: early stopping acts on dev-set evaluations, "
            "but data.dev is not set (nothing is evaluated during training); add a data.dev "
            "corpus or set it to 0"
        ],
        files=_exp(),
    ),
]


def _write(root, files: dict) -> None:
    for name, content in files.items():
        path = os.path.join(root, name)
        if content is None:  # removed (e.g. to put a directory in its place)
            os.remove(path)
            continue
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
def test_bad_input(case, tmp_path, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(str(tmp_path), case.files)
    if case.run:
        shutil.copytree(trained_runs.copy_run(tmp_path_factory.getbasetemp()), "run")
    _write(str(tmp_path), case.after)
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin)))
    capsys.readouterr()
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
