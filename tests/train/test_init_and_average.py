"""`training.init_from` / `init_parts`, `training.average_last`, and re-running a finished run.

One source run (12 steps, a checkpoint every 3, the last 3 averaged, evaluation only at
the end) goes through `kerastx.workflow.train`, the function `kerastx train` calls.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from kerastx import evaluate, tasks, workflow
from kerastx.errors import KerastxError
from kerastx.models.build import build_model
from kerastx.train.checkpoints import MODEL_KEY, canonical_path, model_checkpoint, read_manifest
from kerastx.train.loop import Trainer
from tests.train import util
from tests.train.fakes import FakeData

SOURCE_STEPS = 12


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("source"))
    cfg = util.make_cfg(
        run_dir,
        f"training.train_steps={SOURCE_STEPS}",
        "training.log_every=1",  # every step through the probe: one traced function
        "training.checkpoint_every=3",
        "training.keep_checkpoints=5",
        "training.average_last=3",
    )
    evaluated = []

    def fake_evaluation(trainer, board, should_stop=None):
        evaluated.append(trainer.step)
        return {"loss": 1.0}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "evaluate_during_training", fake_evaluation)
        assert workflow.train(cfg, data=FakeData())["step"] == SOURCE_STEPS
    return {"dir": run_dir, "cfg": cfg, "evaluated": evaluated}


def _ckpt(run_dir, step, sub=""):
    return os.path.join(run_dir, "checkpoints", sub, f"ckpt-{step}")


def _model_tensors(prefix) -> dict:
    """`{variable path: value}` of the model variables of a checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    return {
        entry["path"]: reader.get_tensor(MODEL_KEY.format(i))
        for i, entry in enumerate(read_manifest(prefix))
    }


def test_evaluation_every_zero_evaluates_once_at_the_end(source):
    assert source["evaluated"] == [SOURCE_STEPS]


def test_average_last_is_the_mean_of_the_last_checkpoints(source):
    run_dir = source["dir"]
    kept = [_model_tensors(_ckpt(run_dir, s)) for s in (6, 9, 12)]
    averaged = _model_tensors(_ckpt(run_dir, SOURCE_STEPS, "averaged"))
    assert set(averaged) == set(kept[0])
    moved = 0
    for path, value in averaged.items():
        values = [k[path] for k in kept]
        if value.dtype.kind == "f":
            expected = ((values[0].astype(np.float64) + values[1] + values[2]) / 3).astype(
                value.dtype
            )
            moved += not np.array_equal(values[0], values[2])
        else:
            expected = values[2]  # integer state (e.g. RNG seeds) comes from the newest
        np.testing.assert_array_equal(value, expected, err_msg=path)
    assert moved > 10  # the three checkpoints really differ


def _trainer(run_dir, *overrides, data=None):
    cfg = util.make_cfg(run_dir, "training.train_steps=1", *overrides)
    return Trainer(cfg, data=data or FakeData(), progress=False)


def test_full_init_starts_from_the_source_final_state(source, tmp_path):
    run_dir = str(tmp_path / "fine_tune")
    trainer = _trainer(run_dir, f"training.init_from={source['dir']}")
    trainer.run()
    final = _model_tensors(_ckpt(source["dir"], SOURCE_STEPS))
    # After 1 step the weights moved; the log's step-1 loss was computed before it.
    record = util.read_log(run_dir)[0]
    # The source's final state, restored independently, on the same first batch.
    model = build_model(tasks.create(source["cfg"]), FakeData())
    model_checkpoint(model).read(_ckpt(source["dir"], SOURCE_STEPS)).expect_partial()
    for var in model.trainable_variables:
        np.testing.assert_array_equal(var.numpy(), final[canonical_path(var)])
    loss, _ = util.reference_loss_and_grads(model, util.first_batch(8), 0.1)
    assert record["step"] == 1
    assert record["loss"] == pytest.approx(loss, rel=1e-6)
    # A fresh run starts clearly higher: the copy was effective.
    fresh_cfg = util.make_cfg(str(tmp_path / "fresh"))
    fresh = build_model(tasks.create(fresh_cfg), FakeData())
    assert util.reference_loss_and_grads(fresh, util.first_batch(8), 0.1)[0] > loss + 0.2
    # train_steps (1) below log_every (4): the only step is still logged to TensorBoard.
    assert util.tag_steps(run_dir)["train/loss"] == [1]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["encoder"], lambda p: p.startswith(("encoder_layer_0/", "encoder_norm/"))),
        (["output"], lambda p: p == "target_embedding/output_bias"),
    ],
)
def test_init_parts_copies_only_those_variables(source, tmp_path, parts, expected):
    trainer = _trainer(
        str(tmp_path / "run"),
        f"training.init_from={source['dir']}",
        f"training.init_parts=[{','.join(parts)}]",
    )
    fresh = util.snapshot(trainer.model.trainable_variables)
    trainer._restore_or_init()  # what run() does first
    final = _model_tensors(_ckpt(source["dir"], SOURCE_STEPS))
    copied, kept = [], []
    for var, before in zip(trainer.model.trainable_variables, fresh):
        path = canonical_path(var)
        if expected(path):
            np.testing.assert_array_equal(var.numpy(), final[path], err_msg=path)
            copied.append(path)
        else:
            np.testing.assert_array_equal(var.numpy(), before, err_msg=path)
            if not np.array_equal(before, final[path]):
                kept.append(path)
    assert copied
    # The decoder (and everything else outside the part) keeps its own, different init.
    assert any(p.startswith("decoder_layer_0/") for p in kept)
    if parts == ["output"]:
        # Not the attention output projections nor the experts' or FFN output layers.
        assert copied == ["target_embedding/output_bias"]


def test_init_from_another_vocabulary_names_the_variable(source, tmp_path):
    trainer = _trainer(
        str(tmp_path / "run"), f"training.init_from={source['dir']}", data=FakeData(vocab_size=14)
    )
    with pytest.raises(KerastxError) as info:
        trainer.run()
    prefix = _ckpt(source["dir"], SOURCE_STEPS)
    assert str(info.value) == (
        f"training.init_from: target_embedding/embeddings has shape (12, 32) in {prefix} "
        f"but (14, 32) here"
    )
    assert "\n" not in str(info.value)


def test_a_finished_run_is_a_no_op(source, caplog):
    run_dir = source["dir"]
    before = {
        name: os.path.getmtime(os.path.join(root, name))
        for root, _, files in os.walk(run_dir)
        for name in files
        # config.yaml is rewritten (same content) by every start; .lock taken and released
        if name not in ("config.yaml", ".lock")
    }
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        log_before = f.read()
    caplog.set_level(logging.INFO, logger="kerastx")
    evaluated = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            evaluate, "evaluate_during_training", lambda *a, **k: evaluated.append(1) or {}
        )
        assert workflow.train(source["cfg"], data=FakeData())["complete"]
    assert (
        f"{run_dir}: run is complete: step {SOURCE_STEPS} of training.train_steps="
        f"{SOURCE_STEPS}; nothing to do (raise training.train_steps to train on)"
    ) in caplog.text
    after = {
        name: os.path.getmtime(os.path.join(root, name))
        for root, _, files in os.walk(run_dir)
        for name in files
        if name not in ("config.yaml", ".lock")
    }
    # No new event file, checkpoint, averaged checkpoint or log line; no evaluation.
    assert after == before
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        assert f.read() == log_before
    assert evaluated == []


@pytest.mark.parametrize(
    ("steps", "final", "warned"),
    [
        ([250, 500, 750, 1000], 1000, True),  # the multilingual recipe's measured mistake
        ([850, 900, 950, 1000], 1000, False),
        ([52000, 54000, 56000, 58000, 60000], 60000, False),  # g2p_cmudict.yaml
        ([6, 9, 12], 12, True),
    ],
)
def test_an_average_reaching_back_into_early_training_is_warned(steps, final, warned):
    paths = [f"/runs/x/checkpoints/ckpt-{s}" for s in steps]
    message = workflow.wide_average_warning(paths, final)
    assert (message is not None) == warned
    if warned:
        assert f"steps {steps[0]}-{steps[-1]}" in message
        assert "training.checkpoint_every" in message and "training.average_last" in message
