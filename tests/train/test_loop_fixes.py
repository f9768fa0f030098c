"""Loop fixes: interval boundaries, a NaN on a window's first step, the window's scalars."""

import os

import numpy as np
import pytest

from kerastx.train import summaries
from kerastx.train.loop import NonFiniteLoss, Trainer
from tests.train import util
from tests.train.fakes import FakeData
from tests.train.test_trainer import _poison_loss


def test_steps_per_execution_not_dividing_the_intervals(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(
        run_dir,
        "training.train_steps=13",
        "training.steps_per_execution=4",
        "training.checkpoint_every=6",
        "training.keep_checkpoints=10",
        "training.log_every=5",
    )
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    calls = []
    real = trainer._log_steps

    def log_steps(first_step, stats, journal):
        calls.append((first_step + 1, trainer.step))
        return real(first_step, stats, journal)

    trainer._log_steps = log_steps
    trainer.run()
    # Each chunk runs up to the next log (5, 10), checkpoint (6, 12) or end (13) boundary,
    # at most steps_per_execution (4) steps; the first step of a logging window is a call
    # of its own (the input-timing probe), the rest of the chunk one compiled call.
    # Chunks: 1-4, 5, 6, 7-10, 11-12, 13.
    assert calls == [(1, 1), (2, 4), (5, 5), (6, 6), (7, 10), (11, 11), (12, 12), (13, 13)]
    assert [r["step"] for r in util.read_log(run_dir)] == list(range(1, 14))
    steps = [int(p.rsplit("-", 1)[1]) for p in trainer.checkpoints.manager.checkpoints]
    assert steps == [6, 12, 13]
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-13.index"))
    assert util.tag_steps(run_dir)["train/loss"] == [5, 10, 13]


def test_a_nan_on_the_first_step_of_a_logging_window_is_caught(tmp_path, monkeypatch):
    # Step 11 opens a logging window (log_every=5) in a 4-step call, so it runs alone
    # through the input-timing probe, whose result used to be checked with
    # `not <bad step>`, false for any step number: the NaN went unnoticed (the step was
    # left out of the log, no error, training went on; with a real NaN, from NaN weights).
    _poison_loss(monkeypatch, 2)  # (epoch 1, index 2): flat batch 10, read by step 11
    run_dir = str(tmp_path / "run")
    cfg = util.make_cfg(
        run_dir,
        "training.train_steps=14",
        "training.steps_per_execution=5",
        "training.log_every=5",
        "training.checkpoint_every=10",
    )
    with pytest.raises(NonFiniteLoss) as info:
        Trainer(cfg, data=FakeData(), progress=False).run()
    assert str(info.value) == (
        "non-finite loss at step 11; the last good checkpoint (step 10) is kept "
        "(training.nan_policy=fail)"
    )
    assert [r["step"] for r in util.read_log(run_dir)] == list(range(1, 11))


def _stats(norms, tokens=10.0, routed=None):
    n = len(norms)
    stats = {
        "loss_sum": np.full(n, 2.0 * tokens),
        "nll_sum": np.full(n, 2.0 * tokens),
        "tokens": np.full(n, tokens),
        "correct": np.full(n, tokens / 2),
        "real_slots": np.full(n, 2 * tokens),
        "slots": np.full(n, 4 * tokens),
        "grad_norm": np.asarray(norms, float),
        "lr": np.full(n, 1e-3),
        "loss_scale": np.ones(n),
        "finite": np.isfinite(norms).astype(float),
    }
    if routed is not None:
        stats["moe_routed"] = np.full(n, routed)
        stats["moe_dropped"] = np.full(n, routed / 4)
        stats["aux_loss"] = np.full(n, 0.1 * tokens)
    return stats


def test_window_metrics():
    flops = lambda sums: 1e6 * sums.get("tokens", 0.0)  # noqa: E731
    window = summaries.Window()
    # A call that compiled the step (timing left out), then a timed one of 2 steps, one
    # of them a skipped float16 step with an infinite norm.
    window.add(_stats([1.0], routed=8.0), seconds=5.0, steps=1, timed=False)
    window.add(_stats([3.0, np.inf], routed=8.0), seconds=0.5, steps=2, timed=True)
    window.waited, window.probed = 0.1, 0.4
    m = window.metrics(flops, rate=1e9)
    assert m["grad_norm"] == 2.0  # mean over applied steps; inf used to swallow the window
    assert m["loss"] == 2.0 and m["token_accuracy"] == 0.5 and m["padding_share"] == 0.5
    assert m["step_time"] == 0.25  # 0.5 s over the 2 timed steps, not 5.5 s over 3
    assert m["tokens_per_second"] == 2 * 20.0 / 0.5
    assert m["mfu"] == 1e6 * 20.0 / 0.5 / 1e9
    assert m["input_wait_share"] == 0.25
    assert m["moe_dropped_share"] == 0.25 and m["aux_loss"] == 0.1
    # Only untimed calls: no timing scalars at all; a dense model has no MoE scalars.
    window = summaries.Window()
    window.add(_stats([1.0]), seconds=5.0, steps=1, timed=False)
    assert set(window.metrics(flops, rate=1e9)) == {
        "loss",
        "nll",
        "perplexity",
        "token_accuracy",
        "grad_norm",
        "padding_share",
    }
