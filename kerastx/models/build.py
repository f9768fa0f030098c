"""Building an experiment's model: the task creates it, this builds every variable.

`build_model(task, data, mixed_precision)` is what the trainer, `kerastx.runs` (evaluate,
predict, export) and the bench call. The dtype policy is passed in and applies to the
layers of this model only (`kerastx.runtime.dtype_policy`); the process's global
policy is left as found.
"""

from __future__ import annotations

import tensorflow as tf

from kerastx import runtime


def example_inputs(task) -> dict:
    """A tiny batch that builds every variable: the task's, plus the configured condition."""
    inputs = dict(task.example_inputs())
    model_cfg = task.cfg.model
    if model_cfg.num_conditions:
        inputs["condition"] = tf.constant([0], tf.int32)
    elif model_cfg.condition_dim:
        inputs["condition"] = tf.zeros([1, model_cfg.condition_dim], tf.float32)
    return inputs


def build_model(task, data, mixed_precision: str = "none"):
    """Creates and builds the model of `task.cfg` with vocabulary sizes from `data`.

    Args:
        task: the experiment's `kerastx.tasks.Task`.
        data: its DataModule (tokenizers and labels give the sizes).
        mixed_precision: str. `training.mixed_precision` (none | bfloat16 | float16);
            a run loaded for evaluation or export uses "none".

    Call under the strategy's scope so the variables are distributed.
    """
    with runtime.dtype_policy(mixed_precision):
        model = task.build_model(data)
        model(example_inputs(task), training=False)
    return model
