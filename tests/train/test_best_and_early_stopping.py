"""Best checkpoint by `evaluation.best_metric`, early stopping, and SIGTERM in an evaluation.

The dev evaluation is replaced by a scripted metric sequence (one value per evaluated
step) in the first tests, so the expected best steps and the stopping step are known.
"""

import os
import signal
import threading

import pytest
import tensorflow as tf

from kerastx import evaluate
from kerastx.train.checkpoints import Checkpoints
from kerastx.train.loop import Preempted, Trainer
from tests.train import util
from tests.train.fakes import FakeData

# One step per call, each through the input-timing probe: a single traced function.
COMMON = ["training.steps_per_execution=1", "training.log_every=1", "evaluation.every=2"]


@pytest.fixture
def scripted(monkeypatch):
    """scripted(metric, {step: value}) -> list of evaluated steps; also records saves."""
    calls, saves = [], []
    real_save = Checkpoints.save

    def save(self, best=False):
        saves.append((int(self.step.numpy()), best))
        return real_save(self, best)

    monkeypatch.setattr(Checkpoints, "save", save)

    def script(metric, values):
        def fake_evaluation(trainer, board, should_stop=None):
            calls.append(trainer.step)
            board.scalars(trainer.step, {metric: values[trainer.step]}, "eval")
            return {metric: values[trainer.step]}

        monkeypatch.setattr(evaluate, "evaluate_during_training", fake_evaluation)
        return calls, saves

    return script


def _state(prefix, name):
    return tf.train.load_checkpoint(prefix).get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def test_lower_is_better_early_stopping_survives_a_resume(tmp_path, scripted):
    calls, saves = scripted("loss", {2: 5.0, 4: 4.0, 6: 4.5, 8: 4.2, 10: 4.9, 12: 3.0})
    run_dir = str(tmp_path / "run")
    settings = [*COMMON, "training.checkpoint_every=5", "evaluation.early_stopping_patience=2"]

    def run(steps):
        cfg = util.make_cfg(run_dir, f"training.train_steps={steps}", *settings, dev=True)
        return Trainer(cfg, data=FakeData(), progress=False).run()

    run(6)  # evaluations at 2 (best), 4 (best), 6 (1 without improvement)
    assert calls == [2, 4, 6]
    assert saves == [(2, True), (4, True), (5, False), (6, False)]
    assert _state(os.path.join(run_dir, "checkpoints", "ckpt-6"), "evals_since_best") == 1

    # Resumed with more steps: the count goes on from 1, so the second evaluation without
    # improvement (step 8) stops the run, with a checkpoint at that step although 8 is
    # not a multiple of checkpoint_every. Losing the count would stop at 10 instead.
    result = run(20)
    assert calls == [2, 4, 6, 8]
    assert saves[4:] == [(8, False)]
    assert result["step"] == 8 and result["eval"] == {"loss": 4.2}
    assert [r["step"] for r in util.read_log(run_dir)] == list(range(1, 9))
    best = os.path.join(run_dir, "checkpoints", "best", "best-4")
    assert tf.train.latest_checkpoint(os.path.dirname(best)) == best
    assert _state(best, "best_value") == pytest.approx(4.0)

    # Run again: stopped early means complete; nothing is evaluated, trained or saved.
    result = run(20)
    assert result["complete"].startswith("run is complete: stopped early at step 8")
    assert calls == [2, 4, 6, 8] and len(saves) == 5


def test_higher_is_better_saves_the_best_when_the_metric_rises(tmp_path, scripted):
    calls, saves = scripted("accuracy", {2: 10.0, 4: 30.0, 6: 20.0, 8: 25.0, 10: 40.0})
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(
        run_dir, "training.train_steps=10", *COMMON, "evaluation.best_metric=accuracy", dev=True
    )
    Trainer(cfg, data=FakeData(), progress=False).run()
    assert calls == [2, 4, 6, 8, 10]
    assert [step for step, best in saves if best] == [2, 4, 10]
    best = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", "best"))
    assert best.endswith("best-10")
    assert _state(best, "best_value") == pytest.approx(-40.0)  # stored negated
    assert util.tag_steps(run_dir)["eval/accuracy"] == [2, 4, 6, 8, 10]


class SigtermInEvaluation(FakeData):
    """Sends SIGTERM to this process when the first evaluation starts reading data."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent = False

    def eval_dataset(self, split, batch_size):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().eval_dataset(split, batch_size)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="the trainer's SIGTERM handler needs the main thread",
)
def test_sigterm_during_evaluation_saves_and_the_resumed_run_evaluates_first(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(run_dir, "training.train_steps=4", *COMMON, dev=True)
    with pytest.raises(Preempted) as info:
        Trainer(cfg, data=SigtermInEvaluation(), progress=False).run()
    assert str(info.value) == (
        "preempted by SIGTERM during the evaluation at step 2; checkpoint saved at step 2 "
        "(the evaluation runs again on resume); re-run the same command to resume"
    )
    assert info.value.exit_code == 75
    prefix = os.path.join(run_dir, "checkpoints", "ckpt-2")
    assert tf.train.latest_checkpoint(os.path.dirname(prefix)) == prefix
    assert _state(prefix, "evaluated_step") == 0
    # The interrupted evaluation wrote nothing.
    assert not [tag for tag in util.tag_steps(run_dir) if tag.startswith("eval/")]

    Trainer(cfg, data=FakeData(), progress=False).run()
    steps = util.tag_steps(run_dir)
    assert steps["eval/loss"] == [2, 4]
    assert steps["eval/samples"] == [2, 4]
    assert [r["step"] for r in util.read_log(run_dir)] == [1, 2, 3, 4]


def test_sigterm_after_a_finished_evaluation_saves_once(tmp_path, scripted, monkeypatch):
    # The signal lands after the evaluation's last check: the evaluation counts, the
    # boundary checkpoint at step 4 is written once (the preemption save used to write
    # ckpt-4 a second time, over a good checkpoint), and the run stops with exit code 75.
    calls, saves = scripted("loss", {2: 5.0, 4: 4.0})
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(run_dir, "training.train_steps=6", *COMMON, "training.checkpoint_every=4")
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    real = evaluate.evaluate_during_training

    def then_sigterm(trainer_, board, should_stop=None):
        results = real(trainer_, board, should_stop)
        if trainer_.step == 4:
            trainer_._on_sigterm(signal.SIGTERM, None)
        return results

    monkeypatch.setattr(evaluate, "evaluate_during_training", then_sigterm)
    with pytest.raises(Preempted, match="preempted by SIGTERM; checkpoint saved at step 4"):
        trainer.run()
    assert calls == [2, 4]
    assert saves == [(2, True), (4, True), (4, False)]
    assert _state(os.path.join(run_dir, "checkpoints", "ckpt-4"), "evaluated_step") == 4
