"""Vocabularies are built once into the run directory and reused, never silently rebuilt."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from kerastx.data import DataError, build_data, build_vocabularies
from kerastx.data import vocab as vocab_lib


def _cfg(make_cfg, parallel_files, **data):
    src, tgt = parallel_files
    return make_cfg(
        {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "target_tokenizer": {"type": "symbols"},
            **data,
        }
    )


def test_built_once_then_reused(make_cfg, parallel_files):
    cfg = _cfg(make_cfg, parallel_files)
    paths = build_vocabularies(cfg)
    vocab_dir = os.path.join(cfg.run_dir, "vocab")
    assert paths == {
        "source": os.path.join(vocab_dir, "source.txt"),
        "target": os.path.join(vocab_dir, "target.txt"),
    }
    source = vocab_lib.read_entries(paths["source"])
    assert source[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    letters = set("".join(Path(parallel_files[0]).read_text().split()))
    assert sorted(source[4:]) == sorted(letters)
    assert vocab_lib.read_entries(paths["target"])[4:] == sorted(source[4:], key=source.index)
    manifest = json.loads(Path(vocab_dir, "manifest.json").read_text())
    assert manifest["target.txt"] == {
        "type": "symbols",
        "vocab_size": 8000,
        "min_frequency": 1,
        "lowercase": False,
    }
    stamp = os.stat(paths["source"]).st_mtime_ns
    vocab_lib.write_entries(paths["target"], ["<pad>", "<s>", "</s>", "<unk>", "z"])
    data = build_data(cfg)  # existing files are used as they are
    assert os.stat(paths["source"]).st_mtime_ns == stamp
    assert data.target_tokenizer.vocab_size == 5


def test_changed_settings_are_an_error_not_a_rebuild(make_cfg, parallel_files):
    build_vocabularies(_cfg(make_cfg, parallel_files))
    cfg = _cfg(make_cfg, parallel_files, source_tokenizer={"type": "chars", "lowercase": True})
    path = os.path.join(cfg.run_dir, "vocab", "source.txt")
    message = (
        f"{path}: built with lowercase=False, but data.source_tokenizer now has "
        f"lowercase=True; delete the file to rebuild it or restore the old settings"
    )
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        build_data(cfg)


def test_shared_vocabulary(make_cfg, parallel_files):
    src, tgt = parallel_files
    cfg = make_cfg(
        {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "shared_vocab": True,
            "source_tokenizer": {"type": "words"},
            "target_tokenizer": {"type": "words"},
        }
    )
    data = build_data(cfg)
    assert data.source_tokenizer is data.target_tokenizer
    entries = vocab_lib.read_entries(os.path.join(cfg.run_dir, "vocab", "shared.txt"))
    assert "cat" in entries and "t" in entries  # a source word and a target letter
    bad = make_cfg(
        {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "shared_vocab": True,
            "target_tokenizer": {"type": "symbols"},
        },
        name="bad",
    )
    with pytest.raises(
        DataError,
        match="^"
        + re.escape(
            "data.shared_vocab needs one tokenizer type for both sides; source_tokenizer.type "
            "is chars, target_tokenizer.type is symbols"
        )
        + "$",
    ):
        build_data(bad)


def test_given_vocabulary_is_used_and_not_written(make_cfg, parallel_files, tmp_path):
    given = tmp_path / "given.txt"
    vocab_lib.write_entries(str(given), ["<pad>", "<s>", "</s>", "<unk>", "c", "a", "t"])
    cfg = _cfg(make_cfg, parallel_files, source_tokenizer={"vocab": str(given)})
    paths = build_vocabularies(cfg)
    assert paths["source"] == str(given)
    assert not os.path.exists(os.path.join(cfg.run_dir, "vocab", "source.txt"))
    data = build_data(cfg)
    assert data.source_tokenizer.tokenize(["cat", "dog"]).to_list() == [[4, 5, 6], [3, 3, 3]]
    assert data.report()["train"]["source_unk"] > 0
