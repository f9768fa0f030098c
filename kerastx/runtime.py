"""Process-wide settings, changed only inside a `with` block that restores them.

Library calls (training, loading a run) must not leave process state behind: a second
`train.run` in the same process (a notebook, a sweep, a test session) must give what a
fresh process gives. Each context manager here sets one global, runs the block and puts
back what it found.
"""

from __future__ import annotations

import contextlib
import random

import keras
import numpy as np
import tensorflow as tf

# `training.mixed_precision` -> the Keras dtype policy (variables stay float32).
POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(mixed_precision: str):
    """Layers created inside take `POLICIES[mixed_precision]`; the global policy is
    restored afterwards (a Keras layer reads the global policy once, when created)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def seeded(seed: int):
    """Python, NumPy, TensorFlow and Keras seeded with `seed` inside; restored after.

    Model weights and dropout seed generators drawn inside depend only on `seed`.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    tf_seed = tf.compat.v1.get_seed(None)[0]  # the global seed, or None
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        tf.random.set_seed(tf_seed)


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """TensorFlow's deterministic op kernels on inside (if `enabled`), as before after.

    TensorFlow exports `enable_op_determinism` but neither its inverse nor the query;
    both used here are TensorFlow's own (`tensorflow.python.framework.config`), pinned
    to the supported TensorFlow range by tests/test_runtime.py.
    """
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    if enabled and not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was:
            tf_config.disable_op_determinism()
