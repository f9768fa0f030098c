"""The training loop on a tiny copy task: exact resume, rollback, accumulation, checkpoints."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from kerastx.config import load_experiment
from kerastx.train import loop as loop_lib
from kerastx.train import step as step_lib
from kerastx.train.loop import NonFiniteLoss, Trainer
from tests.train.fakes import FakeData

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = [
    "training.log_every=5",
    "training.checkpoint_every=10",
    "evaluation.every=0",
    "training.warmup_steps=5",
    "training.steps_per_execution=4",
    "model.dropout=0.3",
    "training.deterministic=true",
    "data.test=null",
    "export.enabled=false",
]


def _cfg(run_dir, *overrides):
    cfg, _ = load_experiment(
        [os.path.join(ROOT, "experiments", "copy_task.yaml")],
        [f"run_dir={run_dir}", *BASE, *overrides],
    )
    return cfg


def _train(run_dir, steps, *overrides, data=None):
    cfg = _cfg(run_dir, f"training.train_steps={steps}", *overrides)
    Trainer(cfg, data=data or FakeData(), progress=False).run()
    return _log(run_dir)


def _log(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(records):
    return [(r["step"], r["loss"], r["ids_hash"]) for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 30-step run with dropout on."""
    return _train(str(tmp_path_factory.mktemp("ref")), 30)


def test_log_has_every_step_once_with_finite_numbers(reference):
    assert [r["step"] for r in reference] == list(range(1, 31))
    assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in reference)
    # The schedule: linear warmup over 5 steps to 3e-3, then inverse square root.
    assert reference[0]["lr"] == pytest.approx(3e-3 / 5)
    assert reference[4]["lr"] == pytest.approx(3e-3)
    assert reference[19]["lr"] == pytest.approx(3e-3 * np.sqrt(5 / 20))


def test_resume_is_bit_exact_with_dropout(tmp_path, reference):
    run = str(tmp_path / "run")
    _train(run, 20)
    resumed = _train(run, 30)
    assert _losses(resumed) == _losses(reference)


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, caplog):
    run = str(tmp_path / "run")
    _train(run, 20)
    data_file = glob.glob(os.path.join(run, "checkpoints", "ckpt-20.data-*"))[0]
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    resumed = _train(run, 30)
    assert "ckpt-20 cannot be restored" in caplog.text
    # Steps 11-20 ran twice: the log keeps the re-run, which equals the reference.
    assert _losses(resumed) == _losses(reference)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    run = str(tmp_path / "run")
    _train(run, 10)
    for path in glob.glob(os.path.join(run, "checkpoints", "ckpt-10.data-*")):
        with open(path, "wb"):
            pass
    cfg = _cfg(run, "training.train_steps=20")
    with pytest.raises(loop_lib.KerastxError, match="no checkpoint can be restored"):
        Trainer(cfg, data=FakeData(), progress=False).run()


def _poison_loss(monkeypatch, poisoned_index):
    """Makes the loss NaN on the micro-batch at data position (epoch 1, poisoned_index).

    FakeData has 8 batches per epoch, so (1, 4) is flat batch 12, read by step 13.
    """
    real = step_lib.StepBuilder._micro_grads

    def micro_grads(self, batch, loss_scale):
        grads, stats = real(self, batch, loss_scale)
        bad = tf.logical_and(tf.equal(batch["epoch"], 1), tf.equal(batch["index"], poisoned_index))
        stats["loss_sum"] = tf.where(bad, np.nan, stats["loss_sum"])
        return grads, stats

    monkeypatch.setattr(step_lib.StepBuilder, "_micro_grads", micro_grads)


def test_nan_fail_policy_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    _poison_loss(monkeypatch, 4)  # consumed at step 13
    run = str(tmp_path / "run")
    cfg = _cfg(run, "training.train_steps=30")
    with pytest.raises(NonFiniteLoss) as info:
        Trainer(cfg, data=FakeData(), progress=False).run()
    assert str(info.value) == (
        "non-finite loss at step 13; the last good checkpoint "
        "(step 10) is kept (training.nan_policy=fail)"
    )
    # The steps before the bad one ran and are logged; nothing after it is.
    assert [r["step"] for r in _log(run)] == list(range(1, 13))


def test_nan_rollback_skips_the_offending_batches(tmp_path, monkeypatch, reference):
    _poison_loss(monkeypatch, 4)
    run = str(tmp_path / "run")
    records = _train(run, 30, "training.nan_policy=rollback")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert all(np.isfinite(r["loss"]) for r in records)
    assert _losses(records[:10]) == _losses(reference[:10])
    # Steps 11-14 ran in one call (11 alone, to time the input, then 12-14); step 13 was
    # bad, so the run went back to step 10 and continued after the call's batches: the
    # new step 11 reads what the reference read at step 15.
    assert [r["ids_hash"] for r in records[10:26]] == [r["ids_hash"] for r in reference[14:30]]
    with open(os.path.join(run, "train_log.jsonl.discarded")) as f:
        assert [json.loads(line)["step"] for line in f] == [11, 12]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big = _train(str(tmp_path / "big"), 8, "model.dropout=0.0", data=FakeData(batch_size=8))
    small = _train(
        str(tmp_path / "acc"),
        8,
        "model.dropout=0.0",
        "training.gradient_accumulation=2",
        data=FakeData(batch_size=4),
    )
    np.testing.assert_allclose([r["loss"] for r in small], [r["loss"] for r in big], rtol=1e-5)
    assert [r["ids_hash"] for r in small] == [r["ids_hash"] for r in big]


MIRRORED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from kerastx.train.strategy import configure_logical_cpus
    configure_logical_cpus(2)
    from tests.train import test_trainer as t
    from tests.train.fakes import FakeData
    from kerastx.train.loop import Trainer
    import tensorflow as tf
    out = {{}}
    for name, strategy, batch in (("one", tf.distribute.get_strategy(), 8),
                                  ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 4)):
        cfg = t._cfg({tmp!r} + "/" + name, "training.train_steps=8", "model.dropout=0.0")
        Trainer(cfg, data=FakeData(batch_size=batch), strategy=strategy, progress=False).run()
        out[name] = t._log(cfg.run_dir)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_two_devices_matches_one_device(tmp_path):
    script = MIRRORED.format(root=ROOT, tmp=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    one, two = out["one"], out["two"]
    assert [r["ids_hash"] for r in one] == [r["ids_hash"] for r in two]
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    # Same global batch split over two replicas: equal up to float32 summation order.
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=2e-5)
    np.testing.assert_allclose(
        [r["grad_norm"] for r in two], [r["grad_norm"] for r in one], rtol=2e-4
    )
