"""A training step that runs out of memory: one line, exit code 2, nothing lost.

The line names the steps, the batch shape they read, the model's size, the estimated
step memory and the keys that use less memory; the last good checkpoint is kept and the
same command resumes from it once memory suffices.
"""

import os
import resource
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from kerastx import cli
from kerastx.train.step import StepBuilder
from tests.train import util

EXPERIMENT = os.path.join(util.ROOT, "experiments", "copy_task.yaml")
COMMON = [
    "training.train_steps=12",
    "training.checkpoint_every=4",
    "training.log_every=4",
    "training.steps_per_execution=4",
    "evaluation.every=0",
    "data.dev=null",
    "data.test=null",
    "export.enabled=false",
    "data.train[0].num_examples=400",
]
OOM = (
    "Graph execution error:\n\nDetected at node gradient_tape/x\n"
    "OOM when allocating tensor with shape[64,20,8000,256] and type float on "
    "/job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu\n"
)


def _train(run_dir, *extra):
    args = ["train", EXPERIMENT, "--set", f"run_dir={run_dir}"]
    for item in (*COMMON, *extra):
        args += ["--set", item]
    return cli.main(args)


def _kerastx_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kerastx ")]


def test_out_of_memory_in_a_step_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    run_dir = str(tmp_path / "run")
    real_run = StepBuilder.run
    seen = []

    def run(self, iterator, n):
        if int(self.state["step"].numpy()) < 5:
            return real_run(self, iterator, n)
        # The call of steps 6-8 (step 5 was the window's probe): read its batches, then
        # fail as TensorFlow's allocator does.
        for _ in range(n):
            batch = next(iterator)
            seen.append(tuple(int(x) for x in batch["target_in_ids"].shape))
        raise tf.errors.ResourceExhaustedError(None, None, OOM)

    monkeypatch.setattr(StepBuilder, "run", run)
    assert _train(run_dir) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = _kerastx_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    largest = max(seen, key=lambda shape: shape[0] * shape[1])
    assert line.startswith("kerastx train: error: out of memory in training steps 6-8; ")
    assert f"; batch of {largest[0]} x {largest[1]} (examples x padded tokens); " in line
    params = line.split("; model of ")[1].split(" parameters; ")[0]
    assert 10_000 < int(params.replace(",", "")) < 100_000, line
    assert "; estimated step memory " in line
    # A tiny model's step that "needs" more than the machine has: said to be suspicious.
    assert "far below the machine's memory: check other processes, or report this" in line
    assert "TensorFlow: OOM when allocating tensor with shape[64,20,8000,256] and type float;" in (
        line
    )
    assert (
        "lower data.batch_size (512 tokens), data.max_source_length/data.max_target_length, "
        "or keep the global batch with smaller micro-batches: --set data.batch_size=256 "
        "--set training.gradient_accumulation=2" in line
    )
    # Nothing after the last good checkpoint was written; the same command resumes there.
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).endswith("ckpt-4")
    assert [r["step"] for r in util.read_log(run_dir)] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(StepBuilder, "run", real_run)
    assert _train(run_dir) == 0
    assert [r["step"] for r in util.read_log(run_dir)] == list(range(1, 13))


LIMITED = textwrap.dedent(
    """
    import resource, sys
    import tensorflow as tf

    def vm_data():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024

    # 3 GB of private memory above what the process holds after importing TensorFlow.
    limit = vm_data() + 3 * 10**9
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from kerastx.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_DATA bounds mmap only on Linux"
)
def test_a_real_out_of_memory_under_a_memory_limit(tmp_path):
    # One bucket (every batch 4096 x 32) and a 8192-wide feed-forward layer: its
    # (131072, 8192) activation alone is 4.3 GB, over the 3 GB limit; the allocator
    # refuses it and TensorFlow raises ResourceExhaustedError.
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY
    run_dir = str(tmp_path / "run")
    args = [sys.executable, "-c", LIMITED, "train", EXPERIMENT, "--set", f"run_dir={run_dir}"]
    for item in (
        "data.batch_size=131072",
        "data.bucket_width=0",
        "data.train[0].num_examples=4500",
        "data.train[0].max_length=30",
        "model.d_model=64",
        "model.ffn_dim=8192",
        "training.train_steps=3",
        "evaluation.every=0",
        "data.test=null",
        "export.enabled=false",
    ):
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=util.ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = _kerastx_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith("kerastx train: error: out of memory in training step 1; ")
    assert "; batch of 4096 x 32 (examples x padded tokens); " in line
    assert "OOM when allocating tensor with shape[131072,8192] and type float" in line
    assert "--set data.batch_size=65536 --set training.gradient_accumulation=2" in line
    # No checkpoint and no log record of a step that did not happen.
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) is None
    assert util.read_log(run_dir) == []
    # The estimate in the message is the model's: 10 GB-class for this batch.
    estimate = line.split("estimated step memory ")[1].split(" of ")[0]
    value, unit = estimate.split()
    assert unit == "GiB" and 4 < float(value) < 30, estimate
