"""Mixed precision on CPU: bfloat16 and float16 train; float16 skips non-finite steps.

The float16 test injects an infinite gradient (the loss stays finite) at one step and
checks dynamic loss scaling: the step is logged with `finite_grads: false`, no weight
moves, the loss scale halves, and the learning rate keeps following the trainer's own
step although Keras's `optimizer.iterations` does not advance on the skipped step.
"""

import logging
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from kerastx.train import step as step_lib
from kerastx.train.loop import Trainer
from kerastx.train.schedules import WarmupSchedule
from tests.train import util
from tests.train.fakes import FakeData

STEPS = 16
# FakeData has 8 batches per epoch: (epoch 1, index 1) is flat batch 9, read by step 10.
BAD_STEP = 10
# One step per call, each through the input-timing probe: a single traced function.
COMMON = [
    f"training.train_steps={STEPS}",
    "training.steps_per_execution=1",
    "training.log_every=1",
]


def _expected_lrs():
    schedule = WarmupSchedule(3e-3, 4, "inverse_sqrt", STEPS)
    return [float(schedule(s)) for s in range(1, STEPS + 1)]


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory):
    """A bfloat16 run whose profiler window cannot start (the profiler is made to fail)."""
    run_dir = str(tmp_path_factory.mktemp("bf16"))
    cfg = util.make_cfg(
        run_dir, *COMMON, "training.mixed_precision=bfloat16", "training.profile_steps=[2,3]"
    )

    def broken_start(logdir, options=None):
        raise tf.errors.UnavailableError(None, None, "no profiler in this build")

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("kerastx")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tf.profiler.experimental, "start", broken_start)
            trainer = Trainer(cfg, data=FakeData(), progress=False)
            compute = trainer.model.compute_dtype
            trainer.run()
    finally:
        logger.removeHandler(handler)
    return {"dir": run_dir, "trainer": trainer, "compute": compute, "messages": messages}


def test_bfloat16_trains_and_the_loss_falls(bfloat16_run):
    trainer = bfloat16_run["trainer"]
    records = util.read_log(bfloat16_run["dir"])
    assert bfloat16_run["compute"] == "bfloat16"
    assert {str(v.dtype) for v in trainer.model.trainable_variables} == {"float32"}
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(r["finite_grads"] and math.isfinite(r["loss"]) for r in records)
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    assert [r["lr"] for r in records] == _expected_lrs()
    # No loss scaling outside float16.
    assert {r["loss_scale"] for r in records} == {1.0}
    assert int(trainer.optimizer.iterations.numpy()) == STEPS


def test_a_profiler_that_cannot_start_only_warns(bfloat16_run):
    assert any(
        "training.profile_steps: the profiler did not start" in m and "no profiler" in m
        for m in bfloat16_run["messages"]
    ), bfloat16_run["messages"]
    assert not os.path.exists(os.path.join(bfloat16_run["dir"], "logs", "plugins"))
    assert util.read_log(bfloat16_run["dir"])[-1]["step"] == STEPS


def _poison_gradient(monkeypatch, epoch, index):
    """Makes one gradient entry +inf on the micro-batch at data position (epoch, index)."""
    real = step_lib.StepBuilder._micro_grads

    def micro_grads(self, batch, loss_scale):
        grads, stats = real(self, batch, loss_scale)
        bad = tf.logical_and(tf.equal(batch["epoch"], epoch), tf.equal(batch["index"], index))
        first = grads[0]
        poisoned = tf.tensor_scatter_nd_update(
            first, [[0] * first.shape.rank], tf.constant([np.inf], first.dtype)
        )
        return [tf.where(bad, poisoned, first), *grads[1:]], stats

    monkeypatch.setattr(step_lib.StepBuilder, "_micro_grads", micro_grads)


def test_float16_skips_a_non_finite_step_and_the_schedule_follows_the_trainer_step(
    tmp_path, monkeypatch, bfloat16_run
):
    _poison_gradient(monkeypatch, epoch=1, index=1)
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(run_dir, *COMMON, "training.mixed_precision=float16")
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    assert trainer.model.compute_dtype == "float16"
    weights = util.record_weights(trainer)
    trainer.run()
    records = util.read_log(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))

    bad, before, after = records[BAD_STEP - 1], records[BAD_STEP - 2], records[BAD_STEP]
    # The injected step: finite loss, non-finite gradient, update skipped.
    assert math.isfinite(bad["loss"]) and bad["finite_grads"] is False
    assert before["finite_grads"] and after["finite_grads"]
    for old, new in zip(weights[BAD_STEP - 1], weights[BAD_STEP]):
        np.testing.assert_array_equal(new, old)
    assert any(not np.array_equal(a, b) for a, b in zip(weights[BAD_STEP], weights[BAD_STEP + 1]))
    # Dynamic loss scaling: the scale used by the next step is half of the bad step's.
    assert after["loss_scale"] == bad["loss_scale"] / 2 == before["loss_scale"] / 2

    # The learning rate is schedule(trainer step) at every step, skipped or not: the same
    # sequence as the bfloat16 run, which skipped nothing.
    lrs = [r["lr"] for r in records]
    assert lrs == _expected_lrs() == [r["lr"] for r in util.read_log(bfloat16_run["dir"])]
    # Keras's counter lags by the skipped steps (the injected one and any overflow while
    # the scale settles), so a schedule of optimizer.iterations would have shifted.
    applied = sum(r["finite_grads"] for r in records)
    assert int(trainer.optimizer.iterations.numpy()) == applied < STEPS
    assert lrs[BAD_STEP] != _expected_lrs()[BAD_STEP - 1]

    losses = [r["loss"] for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    # TensorBoard: the float16 run adds the loss scale to the dense-model tags.
    assert set(util.tag_steps(run_dir)) == util.TRAIN_TAGS | {"train/loss_scale"}
