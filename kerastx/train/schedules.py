"""Learning-rate schedules as pure functions of the trainer's own step.

The trainer assigns `schedule(step)` to the optimizer's learning rate before each update,
so the schedule follows the trainer's step even when a float16 update is skipped (Keras's
`optimizer.iterations` does not advance then).
"""

from __future__ import annotations

import math

import tensorflow as tf


class WarmupSchedule:
    """Linear warmup to a peak learning rate, then a decay.

    Args:
        peak: float. Learning rate at the end of warmup.
        warmup_steps: int. Steps of linear warmup from 0 (0 = start at the peak).
        kind: str. "inverse_sqrt" (peak * sqrt(warmup / step), as in Vaswani et al.),
            "cosine" (to `minimum` at `total_steps`) or "constant".
        total_steps: int. Last step (cosine).
        minimum: float. Final learning rate (cosine).

    Call arguments:
        step: int tensor or number. The step about to be taken, counted from 1.

    Returns:
        float32 learning rate.
    """

    KINDS = ("inverse_sqrt", "cosine", "constant")

    def __init__(self, peak, warmup_steps, kind="inverse_sqrt", total_steps=1, minimum=0.0):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}. Received: kind={kind!r}")
        if peak <= 0:
            raise ValueError(f"peak must be positive. Received: peak={peak}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0. Received: warmup_steps={warmup_steps}")
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.total_steps = max(int(total_steps), 1)
        self.minimum = float(minimum)

    def __call__(self, step):
        step = tf.cast(tf.maximum(step, 1), tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        in_warmup = step < warmup if self.warmup_steps else tf.constant(False)
        warm = self.peak * step / warmup
        if self.kind == "constant":
            decayed = tf.constant(self.peak, tf.float32)
        elif self.kind == "inverse_sqrt":
            decayed = self.peak * tf.sqrt(warmup / step)
        else:
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            decayed = self.minimum + 0.5 * (self.peak - self.minimum) * (
                1.0 + tf.cos(math.pi * progress)
            )
        return tf.where(in_warmup, warm, decayed)
