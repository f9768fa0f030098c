"""Tiny runs trained once per test session through the real CLI, for the inference tests.

Each test module wraps these in its own fixture; the runs are cached here by the
session's base temporary directory, so every run trains once however many modules use
it. Tests must not change a shared run (copy it first).
"""

from __future__ import annotations

import os
import shutil

import yaml

from kerastx import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LETTERS = "abcdefghijklmnopqrstuvwx"
_RUNS: dict = {}


def counting_line(start: int) -> str:
    """The toy language of the LM: the letters from `LETTERS[start]` to "x", in order."""
    return " ".join(LETTERS[start:])


def _train(args: list[str]) -> None:
    code = cli.main(["train", *args])
    assert code == 0, f"kerastx train {args} exited with {code}"


def copy_run(base_dir) -> str:
    """The synthetic copy task, 150 steps, evaluated on its test split, not exported."""
    if "copy" not in _RUNS:
        run_dir = os.path.join(str(base_dir), "copy_run")
        _train(
            [
                os.path.join(ROOT, "experiments", "copy_task.yaml"),
                "--set",
                f"run_dir={run_dir}",
                "--set",
                "training.train_steps=150",
                "--set",
                "training.checkpoint_every=150",
                "--set",
                "evaluation.every=0",
                "--set",
                "export.enabled=false",
            ]
        )
        _RUNS["copy"] = run_dir
    return _RUNS["copy"]


def copy_export(base_dir) -> str:
    """A copy of `copy_run` exported by `kerastx export` (parity checked): the run dir."""
    if "copy_export" not in _RUNS:
        run_dir = os.path.join(str(base_dir), "copy_exported")
        shutil.copytree(copy_run(base_dir), run_dir)
        assert cli.main(["export", run_dir]) == 0
        _RUNS["copy_export"] = run_dir
    return _RUNS["copy_export"]


def _experiment(path: str, doc: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f)
    return path


def _model(model_type: str) -> dict:
    return {"type": model_type, "d_model": 32, "num_heads": 2, "ffn_dim": 64, "dropout": 0.0}


def lm_run(base_dir) -> str:
    """A DecoderLM on the counting language ("c d e ... x"), trained and exported."""
    if "lm" not in _RUNS:
        base = os.path.join(str(base_dir), "lm")
        os.makedirs(base, exist_ok=True)
        files = {}
        for split, starts in (("train", list(range(20)) * 50), ("dev", list(range(20)))):
            files[split] = os.path.join(base, f"{split}.txt")
            with open(files[split], "w", encoding="utf-8") as f:
                f.writelines(counting_line(s) + "\n" for s in starts)
        doc = {
            "run_dir": os.path.join(base, "run"),
            "data": {
                "train": [{"type": "text", "path": files["train"]}],
                "dev": {"type": "text", "path": files["dev"]},
                "source_tokenizer": {"type": "symbols"},
                "max_source_length": 32,
                "max_target_length": 32,
                "batch_size": 1024,
            },
            "model": {**_model("decoder_lm"), "num_layers": 2, "max_length": 32},
            "training": {
                "train_steps": 120,
                "learning_rate": 3e-3,
                "warmup_steps": 30,
                "checkpoint_every": 120,
                "log_every": 40,
            },
            "evaluation": {"every": 0},
            "decoding": {"max_length": 32},
        }
        _train([_experiment(os.path.join(base, "lm.yaml"), doc)])
        _RUNS["lm"] = doc["run_dir"]
    return _RUNS["lm"]


def classifier_run(base_dir) -> str:
    """An EncoderClassifier ("has_a" / "no_a": does the text hold the symbol a?), exported."""
    if "classifier" not in _RUNS:
        base = os.path.join(str(base_dir), "classifier")
        os.makedirs(base, exist_ok=True)
        texts = [" ".join(LETTERS[(7 * i + j) % 8] for j in range(1 + i % 5)) for i in range(300)]
        files = {}
        for split, rows in (("train", texts), ("dev", texts[:40])):
            files[split] = os.path.join(base, f"{split}.txt")
            with open(files[split], "w", encoding="utf-8") as f:
                f.writelines(f"{'has_a' if 'a' in t.split() else 'no_a'}\t{t}\n" for t in rows)
        doc = {
            "run_dir": os.path.join(base, "run"),
            "data": {
                "train": [{"type": "labelled", "path": files["train"]}],
                "dev": {"type": "labelled", "path": files["dev"]},
                "source_tokenizer": {"type": "symbols"},
                "max_source_length": 16,
                "max_target_length": 16,
                "batch_size": 512,
            },
            "model": {**_model("encoder_classifier"), "num_layers": 1, "max_length": 16},
            "training": {"train_steps": 30, "warmup_steps": 10, "checkpoint_every": 30},
            "evaluation": {"every": 0},
            "decoding": {"max_length": 16},
        }
        _train([_experiment(os.path.join(base, "classifier.yaml"), doc)])
        _RUNS["classifier"] = doc["run_dir"]
    return _RUNS["classifier"]
