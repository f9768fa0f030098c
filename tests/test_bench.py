"""The benchmark's sections run (tiny settings); figures are not asserted here."""

import pytest

from kerastx import bench


@pytest.mark.slow
def test_training_section_measures_a_tiny_run():
    out = bench.bench_training("copy_task", jit=False, steps=4, warmup=2, rate=1e13)
    assert out["steps"] == 4 and out["parameters"] > 0
    assert out["tokens_per_s"] > 0 and 0 < out["mfu"] < 1


def test_table_formats_every_section():
    results = {
        "matmul": {"matmul_flops_per_s": 1.2e11},
        "train": [
            {
                "experiment": "quickstart",
                "jit_compile": False,
                "parameters": 10,
                "tokens_per_s": 100.0,
                "mfu": 0.5,
                "step_time_s": 0.1,
            }
        ],
        "decode_cache": {"cached_s": 1.0, "uncached_s": 8.0, "speedup": 8.0},
    }
    text = bench.format_table(results)
    assert "120.0 GFLOP/s" in text and "50.0%" in text and "8.00x" in text
