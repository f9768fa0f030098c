"""data_stats, format_stats and measure_pipeline on a tiny corpus with known figures."""

from __future__ import annotations

import pytest

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
