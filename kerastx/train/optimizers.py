"""Keras optimizers that take gradients the trainer has already all-reduced.

Keras 3 optimizers sum gradients across replicas inside `apply`, after their own
clipping. Clipping must see the global gradient, so the trainer all-reduces, normalizes
and clips first; these subclasses then skip Keras's second all-reduce (which would
multiply every gradient by the number of replicas).

Keras 3.15 has no public way to skip it: `apply` takes no argument for it, and applying
in cross-replica context is no way around it either (outside `strategy.scope()` Keras
all-reduces the per-replica gradients in the default replica context, which rejects
them; inside the scope its merge call finds no replica context). So these override the
TensorFlow backend's private `_all_reduce_sum_gradients`, which `apply` calls through
`_backend_update_step`. `tests/test_private_apis.py` pins that hook to the Keras minor
release `setup.cfg` allows; `tests/train/test_optimizers.py` checks under
MirroredStrategy that the gradients are applied once, in both contexts the trainer
applies them (replica context; cross-replica context for float16).
"""

from __future__ import annotations

import keras

from kerastx.config import TrainingConfig


class _PreReduced:
    """Mixin: gradients given to `apply` are already summed over replicas."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Private hook of keras/src/backend/tensorflow/optimizer.py (see module doc).
        return list(grads_and_vars)


def _pre_reduced(base: type) -> type:
    return type(base.__name__, (_PreReduced, base), {"__module__": __name__})


Adam = _pre_reduced(keras.optimizers.Adam)
AdamW = _pre_reduced(keras.optimizers.AdamW)
Adafactor = _pre_reduced(keras.optimizers.Adafactor)


def build_optimizer(cfg: TrainingConfig) -> keras.optimizers.Optimizer:
    """The optimizer of a `training:` section; its learning rate is set every step.

    Args:
        cfg: the training section.

    Returns:
        A Keras optimizer whose `apply` expects globally reduced gradients.
    """
    if cfg.optimizer == "adam":
        return Adam(learning_rate=0.0, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    if cfg.optimizer == "adamw":
        return AdamW(
            learning_rate=0.0,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            epsilon=cfg.epsilon,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adafactor":
        return Adafactor(learning_rate=0.0)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # pragma: no cover
