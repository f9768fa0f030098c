"""data_stats, format_stats and measure_pipeline on a tiny corpus with known figures."""

from __future__ import annotations

import os

import pytest
import yaml

from kerastx.cli import main
from kerastx.data import data_stats, format_stats, measure_pipeline
from tests.data.conftest import write_lines


@pytest.fixture
def cfg(make_cfg, tmp_path):
    src = write_lines(tmp_path / "s.txt", ["ab", "abc", "a", "abcd"])
    tgt = write_lines(tmp_path / "t.txt", ["x", "x y", "y", "x y z"])
    dev_src = write_lines(tmp_path / "ds.txt", ["abq", "b"])
    dev_tgt = write_lines(tmp_path / "dt.txt", ["x", "q"])
    return make_cfg(
        {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "dev": {"type": "parallel", "source": dev_src, "target": dev_tgt},
            "target_tokenizer": {"type": "symbols"},
            "max_source_length": 8,
            "max_target_length": 8,
            "batch_size": 8,
        }
    )


def test_data_stats_exact(cfg):
    stats = data_stats(cfg)
    assert stats["vocabulary"] == {"source": 8, "target": 7}
    assert stats["lengths"]["source"]["histogram"] == {1: 1, 2: 1, 3: 1, 4: 1}
    assert stats["lengths"]["target"]["histogram"] == {1: 2, 2: 1, 3: 1}
    assert stats["lengths"]["source"]["mean"] == 2.5
    assert stats["oov_rate"]["train"] == {"source": 0.0, "target": 0.0}
    assert stats["oov_rate"]["dev"] == {"source": 0.25, "target": 0.5}
    b = stats["batching"]
    assert b["boundaries"] == [1, 2, 3, 4, 5, 6, 7, 8]
    # Batching lengths max(S, T) = 3, 4, 2, 5: one bucket each; 25 real of 28 slots.
    assert b["bucketed"] == {
        "examples": 4,
        "batches": 4,
        "padding_fraction": round(3 / 28, 4),
        "distinct_shapes": 4,
        "shapes": [(1, 2), (1, 3), (1, 4), (1, 5)],
        "max_batch_tokens": 5,
    }
    assert b["no_bucketing"]["padding_fraction"] == round(1 - 25 / 64, 4)
    assert b["no_bucketing"]["shapes"] == [(1, 8)]
    assert 3 / 28 <= b["batch_max_padding_fraction"] <= 1 - 25 / 64
    text = format_stats(stats)
    assert "train: 4 examples, 4 kept, 0 dropped, 0 truncated" in text
    assert "  OOV rate: source 25.0000%, target 50.0000%" in text
    assert "bucketed: 4 batches an epoch, padding 10.71%, 4 distinct batch shapes" in text


def test_measure_pipeline(cfg):
    result = measure_pipeline(cfg, seconds=0.3, warmup_batches=2)
    assert result["examples_per_s"] > 0 and result["tokens_per_s"] > 0
    assert result["padding_fraction"] == round(3 / 28, 4)
    assert result["measured_padding_fraction"] == pytest.approx(3 / 28, abs=1e-3)
    assert result["distinct_shapes_per_epoch"] == 4
    assert result["distinct_shapes_per_epoch_no_bucketing"] == 1


def _errors(capsys) -> list[str]:
    """The error lines on stderr (not the INFO lines counting the examples read)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("kerastx")]


def _experiment(tmp_path, name: str, data: dict) -> str:
    """An experiment file for the CLI; its run_dir is tmp_path/runs/<name>."""
    doc = {"name": name, "run_dir": str(tmp_path / "runs" / name), "data": data}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def _corpus(tmp_path, source: list[str], target: list[str], name: str) -> dict:
    return {
        "type": "parallel",
        "source": write_lines(tmp_path / f"{name}.src", source),
        "target": write_lines(tmp_path / f"{name}.tgt", target),
    }


def test_data_stats_counts_empty_examples(tmp_path, capsys):
    path = _experiment(
        tmp_path,
        "empty",
        {
            "train": [_corpus(tmp_path, ["ab", "", "ba"], ["x", "y", "z"], "train")],
            "dev": _corpus(tmp_path, ["ab", ""], ["x", "y"], "dev"),
            "batch_size": 512,
        },
    )
    assert main(["data-stats", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "train: 3 examples, 2 kept, 0 dropped, 0 truncated, 1 empty dropped, 0 lines with "
        "replaced UTF-8" in out
    )
    assert (
        "dev: 2 examples, 1 kept, 0 dropped, 0 truncated, 1 empty dropped, 0 lines with "
        "replaced UTF-8" in out
    )


def test_data_stats_that_fails_leaves_no_run_dir(tmp_path, capsys):
    train = _corpus(tmp_path, ["ab", "ba"], ["x", "y"], "train")
    missing = str(tmp_path / "nope.src")
    # A dev file missing: found before any vocabulary is written.
    path = _experiment(tmp_path, "missing", {"train": [train], "dev": {**train, "source": missing}})
    assert main(["data-stats", path]) == 2
    assert _errors(capsys) == [f"kerastx data-stats: error: {missing}: file not found"]
    # The batching refused after the vocabularies were built: they are removed again.
    path = _experiment(tmp_path, "budget", {"train": [train], "batch_size": 16})
    assert main(["data-stats", path]) == 2
    assert _errors(capsys) == [
        "kerastx data-stats: error: data.batch_size gives 16 tokens per replica, fewer than "
        "the longest allowed example (256 tokens = max(max_source_length, "
        "max_target_length)); raise data.batch_size or lower the maximum lengths"
    ]
    assert not os.path.exists(tmp_path / "runs")
    # A run dir that existed stays, without the vocabularies of the failed attempt...
    os.makedirs(tmp_path / "runs" / "kept")
    path = _experiment(tmp_path, "kept", {"train": [train], "batch_size": 16})
    assert main(["data-stats", path]) == 2
    assert os.listdir(tmp_path / "runs" / "kept") == []
    # ...and keeps the vocabularies it had when a later data-stats fails.
    path = _experiment(tmp_path, "kept", {"train": [train], "batch_size": 512})
    assert main(["data-stats", path]) == 0
    path = _experiment(tmp_path, "kept", {"train": [train], "batch_size": 16})
    assert main(["data-stats", path]) == 2
    assert sorted(os.listdir(tmp_path / "runs" / "kept" / "vocab")) == [
        "manifest.json",
        "source.txt",
        "target.txt",
    ]


@pytest.mark.parametrize(
    "tokenizer,what", [("chars", "vocabulary file"), ("sentencepiece", "SentencePiece model file")]
)
def test_a_directory_given_as_vocabulary(tmp_path, capsys, tokenizer, what):
    folder = tmp_path / "vocab_dir"
    folder.mkdir()
    path = _experiment(
        tmp_path,
        "vdir",
        {
            "train": [_corpus(tmp_path, ["ab", "ba"], ["x", "y"], "train")],
            "source_tokenizer": {"type": tokenizer, "vocab": str(folder)},
        },
    )
    assert main(["data-stats", path]) == 2
    assert _errors(capsys) == [f"kerastx data-stats: error: {folder}: is a directory, not a {what}"]
    assert not os.path.exists(tmp_path / "runs")  # the target vocabulary was not built
