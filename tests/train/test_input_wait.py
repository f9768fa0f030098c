"""`train/input_wait_share`: the share of a step spent waiting for its input batch."""

import time

from kerastx.train.loop import Trainer
from tests.train import util
from tests.train.fakes import FakeData

SLEEP = 0.3  # seconds per training batch; a tiny model's step takes a few ms


class SlowData(FakeData):
    """FakeData whose training batches each take SLEEP seconds to produce."""

    def _pack(self, epoch, index, ids):
        time.sleep(SLEEP)
        return super()._pack(epoch, index, ids)


def test_slow_input_makes_the_wait_share_large(tmp_path):
    # steps_per_execution=1: every call is one step (the probe must still run; it used to
    # be skipped for one-step calls, which left the share at 0).
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(
        run_dir, "training.train_steps=6", "training.steps_per_execution=1", "training.log_every=2"
    )
    Trainer(cfg, data=SlowData(), progress=False).run()
    events = util.events(run_dir)
    shares = {step: util.scalar(v) for step, v in events["train/input_wait_share"].items()}
    # Window 1-2 compiled both step functions, so its timing is not reported.
    assert sorted(shares) == [4, 6]
    for step, share in shares.items():
        assert 0.5 < share <= 1.0, (step, share)
    # The step time includes the wait: each step waits for its batch.
    for step, value in events["train/step_time"].items():
        assert util.scalar(value) > SLEEP / 2, step
    assert sorted(events["train/step_time"]) == [4, 6]
