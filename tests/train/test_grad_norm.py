"""The logged `grad_norm` is the global norm of the true mean gradient of the global batch.

The reference is computed independently (`util.reference_loss_and_grads`: one plain
GradientTape over the whole global batch, mean label-smoothed cross-entropy over its real
target tokens), from the weights the trainer had before each step. Step 1 runs through
the input-timing probe and step 2 through the compiled multi-step function (one
replica; the other cases run one step, through the probe, to save tracing time).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerastx.train.loop import Trainer
from tests.train import util
from tests.train.fakes import FakeData

SMOOTHING = 0.1  # training.label_smoothing of the copy task (the default)
TWO_STEPS = ["training.train_steps=2", "training.steps_per_execution=2", "training.log_every=2"]
ONE_STEP = ["training.train_steps=1"]


def _run_and_check(trainer) -> list[tuple[float, float]]:
    """Trains; returns (logged, reference) norms of each step."""
    weights = util.record_weights(trainer)
    trainer.run()
    records = util.read_log(trainer.cfg.run_dir)
    steps = list(range(1, trainer.cfg.training.train_steps + 1))
    assert [r["step"] for r in records] == steps
    variables = trainer.model.trainable_variables
    out = []
    for step, record in zip(steps, records):
        for var, value in zip(variables, weights[step - 1]):
            var.assign(value)
        _, grads = util.reference_loss_and_grads(trainer.model, util.batch_at(step - 1), SMOOTHING)
        out.append((record["grad_norm"], util.global_norm(grads)))
    return out


def _assert_norms(norms):
    for logged, reference in norms:
        assert logged == pytest.approx(reference, rel=1e-5)


def _per_micro_batch_mean_norm(trainer, batch) -> float:
    """The norm if each half of `batch` were averaged on its own tokens, then averaged.

    That is what a trainer that normalizes per micro-batch (or per replica) would log;
    the test must tell it apart from the true mean gradient.
    """
    keys = ("source_ids", "target_in_ids", "target_out_ids")
    halves = [{k: batch[k][:4] for k in keys}, {k: batch[k][4:] for k in keys}]
    grads = [util.reference_loss_and_grads(trainer.model, h, SMOOTHING)[1] for h in halves]
    return util.global_norm([(a + b) / 2 for a, b in zip(*grads)])


def test_grad_norm_one_replica(tmp_path):
    cfg = util.make_cfg(str(tmp_path / "run"), *TWO_STEPS)
    norms = _run_and_check(Trainer(cfg, data=FakeData(batch_size=8), progress=False))
    assert len(norms) == 2
    _assert_norms(norms)


def test_grad_norm_two_micro_batches_of_accumulation(tmp_path):
    cfg = util.make_cfg(str(tmp_path / "run"), *ONE_STEP, "training.gradient_accumulation=2")
    trainer = Trainer(cfg, data=FakeData(batch_size=4), progress=False)
    norms = _run_and_check(trainer)
    _assert_norms(norms)
    # The model now holds the weights before step 1 (see _run_and_check): a per-micro-batch
    # average would be off by far more than the tolerance.
    wrong = _per_micro_batch_mean_norm(trainer, util.batch_at(0))
    assert abs(wrong / norms[0][1] - 1) > 1e-3


MIRRORED = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from kerastx.train.strategy import configure_logical_cpus
    configure_logical_cpus(2)
    import tensorflow as tf
    from kerastx.train.loop import Trainer
    from tests.train import test_grad_norm as t, util
    from tests.train.fakes import FakeData
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {{}}
    cfg = util.make_cfg({tmp!r} + "/norm", *t.ONE_STEP)
    trainer = Trainer(cfg, data=FakeData(batch_size=4), strategy=strategy, progress=False)
    out["norms"] = t._run_and_check(trainer)
    # float16 + MirroredStrategy + mixture of experts: the loss-scaled update (applied in
    # cross-replica context) and the routing counters summed over replicas. The first
    # micro-batch's gradient is poisoned (+inf, on one replica): the all-reduced
    # gradient is not finite and the step must be skipped on both replicas.
    from tests.train import test_mixed_precision as mp
    class Patch:
        setattr = staticmethod(setattr)
    mp._poison_gradient(Patch, epoch=0, index=0)
    cfg = util.make_cfg({tmp!r} + "/fp16", "training.train_steps=3", "training.log_every=1",
                        "training.mixed_precision=float16", "model.num_experts=2",
                        "model.moe_every=1", "model.expert_capacity_factor=0.5")
    trainer = Trainer(cfg, data=FakeData(batch_size=4), strategy=strategy, progress=False)
    trainer.run()
    out["fp16"] = util.read_log(cfg.run_dir)
    out["fp16_iterations"] = int(trainer.optimizer.iterations.numpy())
    out["moe_stats"] = {{k: float(v) for k, v in trainer.model.moe_stats().items()}}
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    script = MIRRORED.format(root=util.ROOT, tmp=str(tmp_path_factory.mktemp("mirrored")))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=util.ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_grad_norm_two_replicas(mirrored):
    _assert_norms(mirrored["norms"])


def test_float16_with_two_replicas_trains_and_counts_expert_routing(mirrored):
    records = mirrored["fp16"]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    # The poisoned first step is skipped; Keras's counter advances only on applied steps.
    assert mirrored["fp16_iterations"] == sum(r["finite_grads"] for r in records)
    assert records[0]["finite_grads"] is False and records[-1]["finite_grads"] is True
    # Each step's counters are summed over both replicas: the last step's equal the
    # model's own cross-replica read of its last forward pass.
    last = records[-1]
    assert last["moe_routed"] == mirrored["moe_stats"]["moe/tokens_routed"]
    assert last["moe_dropped"] == mirrored["moe_stats"]["moe/tokens_dropped"]
    # Two MoE layers (encoder and decoder) x top-2 experts x real tokens of both sides.
    assert last["moe_routed"] == 2 * 2 * last["tokens"]
    assert 0 < last["moe_dropped"] < last["moe_routed"]
