"""The benchmark's sections run (tiny settings); figures are not asserted here."""

import pytest

from kerastx import bench


@pytest.mark.slow
def test_training_section_reports_the_median_window_against_rates_around_it():
    out = bench.bench_training("copy_task", jit=False, steps=3, warmup=2, windows=3)
    assert out["steps"] == 9 and out["windows"] == 3 and out["parameters"] > 0
    mfus = out["mfu_windows"]
    assert 1 <= len(mfus) <= 3 and all(0 < m < 1 for m in mfus)
    assert out["mfu"] == sorted(mfus)[(len(mfus) - 1) // 2]
    assert out["tokens_per_s"] in out["tokens_per_s_windows"]
    assert len(out["matmul_rates"]) == 4  # before each window and after the last
    assert out["matmul_flops_per_s"] == max(out["matmul_rates"]) > 0


@pytest.mark.slow
def test_isolated_row_runs_in_a_fresh_process():
    out = bench.bench_training_isolated("copy_task", jit=False, steps=3, warmup=2, windows=2)
    assert out["steps"] == 6 and out["tokens_per_s"] > 0 and 0 < out["mfu"] < 1
    assert len(out["matmul_rates"]) == 3


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
                "mfu_windows": [0.45, 0.5, 0.55],
                "step_time_s": 0.1,
            }
        ],
        "decode_cache": {"cached_s": 1.0, "uncached_s": 8.0, "speedup": 8.0},
    }
    text = bench.format_table(results)
    assert "120.0 GFLOP/s" in text and "50.0%" in text and "45.0-55.0%" in text and "8.00x" in text


def test_table_formats_the_memory_section():
    train = {
        "case": "seq2seq_32k",
        "batch_shape": [128, 32],
        "parameters": 31_130_880,
        "estimate": {"total": 2 * 2**30},
        "tf_peak_bytes": 2**30,
        "rss_peak_bytes": 3 * 2**30,
        "step_time_s": 5.5,
    }
    decode = {
        "case": "seq2seq_32k",
        "rows": 128,
        "cache_length": 128,
        "tf_peak_bytes": 600 * 2**20,
        "estimate_bytes": 500 * 2**20,
        "step_time_s": 0.2,
        "max_abs_error_vs_full_pass": 0.0,
    }
    pair = {
        name: {
            "step_time_s": t,
            "step_time_min_s": t - 0.1,
            "step_time_max_s": t + 0.1,
            "process_medians_s": [t, t],
            "tf_peak_bytes": 2**30,
            "rss_peak_bytes": 2**31,
        }
        for name, t in (("seq2seq_8k_tied", 1.8), ("seq2seq_8k_untied", 2.0))
    }
    pair["tied_over_untied_step_time"] = 0.9
    results = {
        "matmul": {"matmul_flops_per_s": 1.2e11},
        "memory": {"train": [train], "decode": [decode], "tied_vs_untied": pair},
    }
    text = bench.format_table(results)
    assert "seq2seq_32k" in text and "128x32" in text and "31,130,880" in text
    assert "2.0 GiB" in text and "1.0 GiB" in text and "0.50" in text  # estimate, peak, ratio
    assert "TF peak 600.0 MiB vs estimate 500.0 MiB (1.20)" in text
    assert "tied / untied step time: 0.900" in text


@pytest.mark.parametrize("name", ["quickstart", "bench_g2p"])
def test_training_rows_load_their_experiments(name, tmp_path):
    """The rows' overrides make a valid experiment (a rule added later broke them)."""
    from kerastx import bench

    cfg = bench._cfg(name, str(tmp_path), *bench.training_overrides(10, False))
    assert cfg.data.dev is None and cfg.evaluation.best_metric == "loss"
