"""Helpers for the data tests: tiny files in tmp_path and experiments loaded from YAML."""

from __future__ import annotations

import pytest
import yaml

from kerastx.config import load_experiment


def write_lines(path, lines) -> str:
    """Writes text lines (each ended by a newline) and returns the path as str."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(data, model_type="seq2seq", seed=1234, name="exp") -> ExperimentConfig."""

    def make(data: dict, model_type: str = "seq2seq", seed: int = 1234, name: str = "exp"):
        doc = {
            "name": name,
            "run_dir": str(tmp_path / f"run_{name}"),
            "seed": seed,
            "data": {"data_dir": str(tmp_path / "data"), **data},
            "model": {"type": model_type},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        cfg, _ = load_experiment([str(path)])
        return cfg

    return make


WORDS = [
    "cat",
    "dog",
    "a",
    "bird",
    "horse",
    "elephant",
    "ox",
    "emu",
    "zebra",
    "lion",
    "tiger",
    "bear",
    "wolf",
    "fox",
    "hippopotamus",
    "crocodile",
    "yak",
    "gnu",
    "ant",
    "bee",
]


@pytest.fixture
def parallel_files(tmp_path):
    """A small parallel corpus: words -> their letters spaced and reversed (60 lines)."""
    src = [WORDS[i % len(WORDS)] + ("s" * (i // len(WORDS))) for i in range(60)]
    tgt = [" ".join(reversed(w)) for w in src]
    return write_lines(tmp_path / "train.src", src), write_lines(tmp_path / "train.tgt", tgt)
