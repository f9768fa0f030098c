"""Helpers of the trainer tests: configs, logs, TensorBoard events, reference losses."""

import glob
import json
import os

import numpy as np
import tensorflow as tf

from kerastx.config import load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny copy task without dropout, test split or export; tests add what they need.
BASE = [
    "training.log_every=4",
    "training.checkpoint_every=100",
    "training.steps_per_execution=4",
    "training.warmup_steps=4",
    "training.deterministic=true",
    "model.dropout=0.0",
    "evaluation.every=0",
    "data.test=null",
    "export.enabled=false",
]
# The timing scalars: written for windows with at least one call that did not trace
# (compile) a function, so not for the first window of a process.
TIMING_TAGS = {
    f"train/{name}" for name in ("tokens_per_second", "step_time", "input_wait_share", "mfu")
}
# Every `train/` tag a dense float32 model writes at each logged step.
TRAIN_TAGS = TIMING_TAGS | {
    f"train/{name}"
    for name in (
        "loss",
        "nll",
        "perplexity",
        "token_accuracy",
        "grad_norm",
        "padding_share",
        "learning_rate",
    )
}


def make_cfg(run_dir, *overrides, dev=False):
    """The copy-task experiment with BASE and `overrides`; no dev set unless `dev`."""
    cfg, _ = load_experiment(
        [os.path.join(ROOT, "experiments", "copy_task.yaml")],
        [f"run_dir={run_dir}", *BASE, *([] if dev else ["data.dev=null"]), *overrides],
    )
    return cfg


def read_log(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def event_files(run_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "logs", "events.out.tfevents.*")))


def events(run_dir) -> dict:
    """`{tag: {step: summary value proto}}` over every event file of the run."""
    out: dict = {}
    for path in event_files(run_dir):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value
    return out


def tag_steps(run_dir) -> dict:
    """`{tag: sorted steps}`."""
    return {tag: sorted(steps) for tag, steps in events(run_dir).items()}


def scalar(value) -> float:
    """The float of a scalar summary value (TF2 writes scalars as tensors)."""
    return float(tf.make_ndarray(value.tensor))


def first_batch(batch_size: int, data_cls=None, **kwargs) -> dict:
    """The first training batch of a FakeData stream (epoch 0, index 0) as numpy arrays."""
    from tests.train.fakes import FakeData

    data = (data_cls or FakeData)(batch_size=batch_size, **kwargs)
    index, ids = next(data._batches(0))
    return data._pack(0, index, ids)


def batch_at(flat: int, batch_size: int = 8) -> dict:
    """Global batch number `flat` of the FakeData stream, as numpy arrays."""
    from tests.train.fakes import FakeData

    data = FakeData(batch_size=batch_size)
    per_epoch = len(list(data._batches(0)))
    epoch, index = divmod(flat, per_epoch)
    _, ids = list(data._batches(epoch))[index]
    return data._pack(epoch, index, ids)


def reference_loss_and_grads(model, batch: dict, smoothing: float):
    """The training objective and its gradient, written independently of kerastx.train.

    Loss = mean over real target tokens (label != 0) of the cross-entropy against the
    smoothed target `(1 - s) one_hot + s / V`, over the whole batch at once.

    Returns:
        `(loss, grads)`: float, list of float64 numpy arrays (one per trainable variable).
    """
    inputs = {
        "source_ids": tf.constant(batch["source_ids"]),
        "target_in_ids": tf.constant(batch["target_in_ids"]),
    }
    labels = tf.constant(batch["target_out_ids"])
    with tf.GradientTape() as tape:
        logits = tf.cast(model(inputs, training=True), tf.float32)
        vocab = logits.shape[-1]
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        target = (1.0 - smoothing) * tf.one_hot(labels, vocab) + smoothing / vocab
        per_token = -tf.reduce_sum(target * log_probs, axis=-1)
        mask = tf.cast(labels != 0, tf.float32)
        loss = tf.reduce_sum(per_token * mask) / tf.reduce_sum(mask)
    grads = tape.gradient(loss, model.trainable_variables)
    grads = [np.asarray(tf.convert_to_tensor(g), np.float64) for g in grads]
    return float(loss), grads


def global_norm(grads) -> float:
    return float(np.sqrt(sum(np.sum(g * g) for g in grads)))


def snapshot(variables) -> list:
    return [np.array(v.numpy(), copy=True) for v in variables]


def record_weights(trainer) -> dict:
    """Makes `trainer` keep `{step: trainable weights}` after each call of its step.

    With `training.steps_per_execution=1` every step is its own call.
    """
    weights = {trainer.step: snapshot(trainer.model.trainable_variables)}
    real = trainer._log_steps

    def log_steps(first_step, stats, journal):
        weights[trainer.step] = snapshot(trainer.model.trainable_variables)
        return real(first_step, stats, journal)

    trainer._log_steps = log_steps
    return weights
