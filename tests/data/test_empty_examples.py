"""`data.empty_examples`: an example with an empty side is dropped and counted, or an error.

Empty = a side with no token after tokenization: a blank line, an empty TSV field, a
line of spaces under a words tokenizer. Counted like length drops (`report()`, the log,
`data-stats`), in train, dev and test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from kerastx.data import DataError, build_data
from tests.data.conftest import write_lines


def _raises(cfg, message, split=None):
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        data = build_data(cfg)
        data.eval_dataset(split, 4) if split else data.train_corpora()


@pytest.fixture
def files(tmp_path):
    """Train: line 2 has an empty source, line 4 a target of spaces (words: no token)."""
    return {
        "src": write_lines(tmp_path / "s.txt", ["ab", "", "abc", "ba", "a"]),
        "tgt": write_lines(tmp_path / "t.txt", ["x", "y", "x y", "   ", "y"]),
        "dev_src": write_lines(tmp_path / "ds.txt", ["ab", ""]),
        "dev_tgt": write_lines(tmp_path / "dt.txt", ["x", "y"]),
        "test": write_lines(tmp_path / "test.tsv", ["source\ttarget", "ab\tx", "ba\t", "abc\tx y"]),
    }


def _data(files, **extra):
    return {
        "train": [{"type": "parallel", "source": files["src"], "target": files["tgt"]}],
        "dev": {"type": "parallel", "source": files["dev_src"], "target": files["dev_tgt"]},
        "test": {"type": "tsv", "path": files["test"]},
        "target_tokenizer": {"type": "words"},
        **extra,
    }


def test_empty_examples_are_dropped_and_counted_in_every_split(make_cfg, files):
    data = build_data(make_cfg(_data(files)))
    report = data.report()
    for split, (examples, empty) in {"train": (5, 2), "dev": (2, 1), "test": (3, 1)}.items():
        counts = report[split]
        assert (counts["examples"], counts["kept"], counts["empty"]) == (
            examples,
            examples - empty,
            empty,
        ), split
        assert counts["dropped"] == 0  # length drops stay their own count
    assert data.train_corpora()[0].rows.tolist() == [0, 2, 4]
    dev_ids = np.concatenate([b["example_id"] for b in data.eval_dataset("dev", 4)])
    assert dev_ids.tolist() == [0]
    test_ids = np.concatenate([b["example_id"] for b in data.eval_dataset("test", 4)])
    assert sorted(test_ids.tolist()) == [0, 2]


def test_empty_examples_error_names_the_file_and_line(make_cfg, files, tmp_path):
    cfg = make_cfg(_data(files, empty_examples="error"))
    _raises(
        cfg,
        f"{files['src']}:2: source is empty (a blank line or no token after tokenization); "
        f"fix the line or set data.empty_examples: drop",
    )
    src = write_lines(tmp_path / "s2.txt", ["ab", "b", "abc", "ba", "a"])
    cfg = make_cfg(
        {
            **_data(files, empty_examples="error"),
            "train": [{"type": "parallel", "source": src, "target": files["tgt"]}],
        },
        name="exp2",
    )
    _raises(
        cfg,
        f"{files['tgt']}:4: target is empty (a blank line or no token after tokenization); "
        f"fix the line or set data.empty_examples: drop",
    )
    tgt = write_lines(tmp_path / "t2.txt", ["x", "y", "x y", "x", "y"])
    cfg = make_cfg(
        {
            **_data(files, empty_examples="error"),
            "train": [{"type": "parallel", "source": src, "target": tgt}],
        },
        name="exp3",
    )
    _raises(
        cfg,
        f"{files['dev_src']}:2: source is empty (a blank line or no token after "
        f"tokenization); fix the line or set data.empty_examples: drop",
        split="dev",
    )
    _raises(
        cfg,
        f"{files['test']}:3: target is empty (a blank line or no token after "
        f"tokenization); fix the line or set data.empty_examples: drop",
        split="test",
    )


def test_a_split_of_empty_examples_only_is_an_error(make_cfg, tmp_path):
    blank = write_lines(tmp_path / "blank.txt", [""])
    one = write_lines(tmp_path / "one.txt", ["x"])
    cfg = make_cfg({"train": [{"type": "parallel", "source": blank, "target": one}]})
    _raises(
        cfg,
        "data.train: no training example left (1 empty, dropped by data.empty_examples: drop)",
    )
    src = write_lines(tmp_path / "s.txt", ["ab", "abcdefgh"])
    tgt = write_lines(tmp_path / "t.txt", ["", "x"])
    cfg = make_cfg(
        {"train": [{"type": "parallel", "source": src, "target": tgt}], "max_source_length": 4},
        name="exp2",
    )
    _raises(
        cfg,
        "data.train: no training example left (1 dropped as longer than "
        "data.max_source_length/max_target_length; 1 empty, dropped by "
        "data.empty_examples: drop)",
    )
    cfg = make_cfg(
        {
            "train": [{"type": "parallel", "source": one, "target": one}],
            "dev": {"type": "parallel", "source": blank, "target": one},
        },
        name="exp3",
    )
    _raises(
        cfg,
        "data.dev: no example left (1 empty, dropped by data.empty_examples: drop)",
        split="dev",
    )
