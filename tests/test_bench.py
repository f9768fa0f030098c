"""The benchmark's sections run (tiny settings); figures are not asserted here."""

import pytest

from kerastx import bench


@pytest.mark.slow
def test_training_section_measures_a_tiny_run():
    out = bench.bench_training("copy_task", jit=False, steps=4, warmup=2, rate=1e13)
    assert out["steps"] == 4 and out["parameters"] > 0
    assert out["tokens_per_s"] > 0 and 0 < out["mfu"] < 1


@pytest.mark.slow
def test_isolated_row_runs_in_a_fresh_process_with_its_own_matmul_rate():
    out = bench.bench_training_isolated("copy_task", jit=False, steps=4, warmup=2)
    before, after = out["matmul_before_after"]
    assert out["matmul_flops_per_s"] == max(before, after) > 0
    assert out["steps"] == 4 and out["tokens_per_s"] > 0 and 0 < out["mfu"] < 1


def test_isolated_row_failure_names_the_row():
    with pytest.raises(RuntimeError, match=r"bench row no_such_experiment \(xla=False\)"):
        bench.bench_training_isolated("no_such_experiment", jit=False, steps=1, warmup=0)


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
