"""What training prints on the console: an ETA without the compile time, and no empty
evaluation line without a dev set (issue 13, console)."""

import io

from kerastx import evaluate
from kerastx.train.loop import Trainer
from kerastx.train.summaries import Progress
from tests.train import util
from tests.train.fakes import FakeData


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def test_the_eta_is_measured_after_the_first_update_and_leaves_out_compilation():
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress(100, 0, stream=stream, clock=clock)
    clock.now = 300.0  # the first 10 steps took 300 s, nearly all of it compiling
    progress.update(10, {"loss": 2.0})
    clock.now = 310.0  # then 1 s per step
    progress.update(20, {"loss": 1.5})
    clock.now = 345.0  # then 1.75 s per step: 45 s for the 30 steps since step 10
    progress.update(40, {"loss": 1.25})
    assert stream.getvalue().splitlines() == [
        "[##----------------------] 10/100  loss 2",  # no rate yet: no ETA
        "[####--------------------] 20/100  eta 0:01:20  loss 1.5",  # 80 steps x 1 s
        "[#########---------------] 40/100  eta 0:01:30  loss 1.25",  # 60 x 1.5 s
    ]
    # Before, the compile time counted: 310 s / 20 steps x 80 steps = 0:20:40 at step 20.


def test_a_resumed_session_measures_from_its_own_first_update():
    clock = FakeClock(1000.0)
    progress = Progress(100, 50, stream=io.StringIO(), clock=clock)
    assert progress.eta(60) is None
    progress.update(60, {})
    clock.now = 1020.0
    assert progress.eta(60) is None  # no step since the first update
    assert progress.eta(70) == 20.0 / 10 * 30


def test_no_evaluation_line_without_a_dev_set(tmp_path, monkeypatch, capsys):
    # No dev set: the evaluation at step 2 gives {} (the real function) and prints
    # nothing; at step 4 a stand-in gives numbers and the line shows them.
    real = evaluate.evaluate_during_training

    def evaluation(trainer, board, should_stop=None):
        return {"loss": 1.5} if trainer.step == 4 else real(trainer, board, should_stop)

    monkeypatch.setattr(evaluate, "evaluate_during_training", evaluation)
    cfg = util.make_cfg(str(tmp_path / "run"), "training.train_steps=4", "evaluation.every=2")
    Trainer(cfg, data=FakeData()).run()
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "eval:" in line] == ["step 4 eval: {'loss': 1.5}"]
    assert lines[-1] == "done at step 4"
