"""Ctrl-C (SIGINT) is handled as SIGTERM: a checkpoint at the step reached, exit code 130,
one line, and the same command resumes (issue 13, case 19)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from kerastx import evaluate
from kerastx.train.loop import Interrupted, Trainer
from tests.train import util
from tests.train.fakes import FakeData

STEPS = 30
COMMON = [
    f"training.train_steps={STEPS}",
    "training.checkpoint_every=10",
    "training.log_every=5",
    "training.steps_per_execution=2",
    "training.deterministic=true",
    "evaluation.every=0",
    "data.dev=null",
    "data.test=null",
    "export.enabled=false",
    "data.train[0].num_examples=400",
]
main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="the trainer's signal handlers need the main thread",
)


def _command(run_dir):
    args = [sys.executable, "-m", "kerastx", "train"]
    args += [os.path.join(util.ROOT, "experiments", "copy_task.yaml")]
    for item in (f"run_dir={run_dir}", *COMMON):
        args += ["--set", item]
    return args


def _steps(run_dir) -> list[int]:
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip().endswith("}")]


def _kerastx_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kerastx ")]


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_the_same_command_resumes(tmp_path):
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _command(run_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=util.ROOT,
    )
    deadline = time.monotonic() + 300
    while max(_steps(run_dir), default=0) < 13:  # past the checkpoint at step 10
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "training did not reach step 13"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    stopped = max(_steps(run_dir))
    assert 10 < stopped < STEPS
    assert _kerastx_lines(err) == [
        f"kerastx train: error: interrupted (Ctrl-C); checkpoint saved at step {stopped}; "
        f"re-run to resume"
    ]
    assert (
        "Ctrl-C: stopping after the running steps with a checkpoint (Ctrl-C again quits at "
        "once, without one)" in err
    )
    checkpoints = os.path.join(run_dir, "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints) == os.path.join(checkpoints, f"ckpt-{stopped}")
    # The same command resumes at the next step; every step is logged exactly once.
    done = subprocess.run(
        _command(run_dir), capture_output=True, text=True, env=env, cwd=util.ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {checkpoints}/ckpt-{stopped} at step {stopped}" in done.stderr
    assert _steps(run_dir) == list(range(1, STEPS + 1))


@main_thread_only
def test_a_second_ctrl_c_takes_the_default_action_and_the_handlers_are_restored(tmp_path):
    cfg = util.make_cfg(str(tmp_path / "run"), "training.train_steps=2")
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with trainer._session():
        assert signal.getsignal(signal.SIGINT) == trainer._on_sigint
        assert signal.getsignal(signal.SIGTERM) == trainer._on_sigterm
        trainer._on_sigint(signal.SIGINT, None)
        # The next Ctrl-C ends the process at once (no Python code runs for it).
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        trainer._on_sigterm(signal.SIGTERM, None)  # the first signal decides the exit
        assert trainer._stop_signal == signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@main_thread_only
def test_ctrl_c_at_a_step_boundary_and_during_an_evaluation(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(
        run_dir,
        "training.train_steps=8",
        "training.steps_per_execution=2",
        "evaluation.every=4",
        dev=True,
    )
    real = evaluate.evaluate_during_training

    def interrupted_evaluation(trainer, board, should_stop=None):
        trainer._on_sigint(signal.SIGINT, None)
        return real(trainer, board, should_stop)

    monkeypatch.setattr(evaluate, "evaluate_during_training", interrupted_evaluation)
    with pytest.raises(Interrupted) as info:
        Trainer(cfg, data=FakeData(), progress=False).run()
    assert str(info.value) == (
        "interrupted (Ctrl-C) during the evaluation at step 4; checkpoint saved at step 4 "
        "(the evaluation runs again on resume); re-run to resume"
    )
    assert info.value.exit_code == 130
    monkeypatch.setattr(evaluate, "evaluate_during_training", real)

    # Resumed: the evaluation at step 4 runs first; Ctrl-C in the steps after it.
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    real_chunk = trainer._run_chunk

    def chunk(*args):
        result = real_chunk(*args)
        if trainer.step == 6:
            trainer._on_sigint(signal.SIGINT, None)
        return result

    trainer._run_chunk = chunk
    with pytest.raises(Interrupted, match=r"^interrupted \(Ctrl-C\); checkpoint saved at step 6;"):
        trainer.run()
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).endswith("ckpt-6")
    assert [r["step"] for r in util.read_log(run_dir)] == [1, 2, 3, 4, 5, 6]
