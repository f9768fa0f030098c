"""Kill, preempt and resume through the real command line.

Every run trains the synthetic copy task with dropout on and op determinism, so an
interrupted-and-resumed run must log exactly the uninterrupted run's losses, bit for bit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kerastx.train import launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
COMMON = [
    f"training.train_steps={STEPS}",
    "training.checkpoint_every=10",
    "training.log_every=5",
    "training.steps_per_execution=2",
    "training.deterministic=true",
    "model.dropout=0.1",
    "evaluation.every=0",
    "data.test=null",
    "export.enabled=false",
    "data.train[0].num_examples=400",
]
pytestmark = pytest.mark.slow


def _command(run_dir, *extra):
    args = [
        sys.executable,
        "-m",
        "kerastx",
        "train",
        os.path.join(ROOT, "experiments", "copy_task.yaml"),
        "--set",
        f"run_dir={run_dir}",
    ]
    for item in (*COMMON, *extra):
        args += ["--set", item]
    return args


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _log(run_dir):
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _rows(records):
    return [(r["step"], r["loss"], r["grad_norm"], r["ids_hash"]) for r in records]


def _run(run_dir, *extra, check=True):
    proc = subprocess.run(
        _command(run_dir, *extra), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start_and_wait(run_dir, until, *extra):
    """Starts a training process and returns it once `until(run_dir)` is true."""
    proc = subprocess.Popen(
        _command(run_dir, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while not until(run_dir):
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training did not reach the kill point")
        time.sleep(0.02)
    return proc


def _state(run_dir):
    path = os.path.join(run_dir, "checkpoints", "checkpoint")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _reached(step):
    return lambda run_dir: any(r["step"] >= step for r in _log(run_dir))


def _saved(step):
    def check(run_dir):
        return f'ckpt-{step}"' in _state(run_dir)

    return check


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("reference"))
    _run(run_dir)
    records = _log(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return _rows(records)


@pytest.mark.parametrize("kill_point", ["mid_interval", "right_after_save"])
def test_sigkill_and_rerun_gives_the_uninterrupted_losses(tmp_path, reference, kill_point):
    run_dir = str(tmp_path / "run")
    until = _reached(15) if kill_point == "mid_interval" else _saved(20)
    proc = _start_and_wait(run_dir, until)
    proc.kill()
    proc.communicate()
    killed_at = max(r["step"] for r in _log(run_dir))
    assert killed_at < STEPS
    _run(run_dir)
    records = _log(run_dir)
    # Every step exactly once, and the same numbers as the run that was never killed.
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert _rows(records) == reference


def test_sigterm_saves_exits_75_and_resumes_exactly(tmp_path, reference):
    run_dir = str(tmp_path / "run")
    proc = _start_and_wait(run_dir, _reached(13))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "preempted by SIGTERM; checkpoint saved at step" in err
    stopped = max(r["step"] for r in _log(run_dir))
    # Saved at the step where it stopped, not at the last interval.
    assert f'ckpt-{stopped}"' in _state(run_dir)
    _run(run_dir)
    assert _rows(_log(run_dir)) == reference


def test_resuming_off_the_logging_grid_is_bit_exact(tmp_path, reference):
    # A SIGTERM checkpoint can land on any step. Stopping at 17 (log_every=5) once made
    # step 18 run through the input-timing probe graph, which the uninterrupted run only
    # uses on the grid (1, 6, 11, ...): the losses then drifted in the last float bits.
    run_dir = str(tmp_path / "run")
    _run(run_dir, "training.train_steps=17")
    _run(run_dir)
    assert _rows(_log(run_dir)) == reference


def test_changed_config_is_refused_on_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    _run(run_dir, "training.train_steps=4")
    proc = _run(run_dir, "training.train_steps=6", "model.ffn_dim=32", check=False)
    assert proc.returncode == 2
    assert "cannot resume this run with a changed config (model.ffn_dim: 64 -> 32)" in proc.stderr


def _worker(run_dir, ports, index, *extra):
    env = {**launch.worker_env(ports, index), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        _command(run_dir, "distribution.strategy=multi_worker", *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_two_local_workers_agree_with_one_process_of_two_replicas(tmp_path):
    steps = ["training.train_steps=12", "model.dropout=0.0"]
    single = str(tmp_path / "single")
    _run(single, *steps, "distribution.strategy=mirrored", "distribution.logical_cpus=2")
    multi = str(tmp_path / "multi")
    ports = launch.free_ports(2)
    workers = [_worker(multi, ports, i, *steps) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    one, two = _log(single), _log(multi)
    assert [r["ids_hash"] for r in one] == [r["ids_hash"] for r in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-5)


def test_a_killed_worker_makes_the_other_fail_within_the_timeout(tmp_path):
    run_dir = str(tmp_path / "run")
    ports = launch.free_ports(2)
    extra = ["training.train_steps=100000", "distribution.timeout_seconds=20"]
    workers = [_worker(run_dir, ports, i, *extra) for i in range(2)]
    deadline = time.monotonic() + 300
    while not _reached(3)(run_dir):
        assert time.monotonic() < deadline, "the workers did not start training"
        assert all(w.poll() is None for w in workers), workers[0].stderr.read()[-2000:]
        time.sleep(0.05)
    workers[1].kill()
    killed = time.monotonic()
    workers[1].communicate()
    try:
        workers[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        workers[0].kill()
        workers[0].communicate()
        raise AssertionError("the surviving worker hung after its peer died") from None
    assert workers[0].returncode != 0
    assert time.monotonic() - killed < 20 + 60
