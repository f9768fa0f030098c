"""Isolation for the trainer tests: each test leaves Keras and the kerastx logger as found.

`Trainer` sets the global Keras dtype policy (mixed precision) and `kerastx.train.run`
(also reached through `kerastx.cli.main`) configures the `kerastx` logger without
propagation, so pytest's caplog stops seeing it; both are process-wide and leak from one
test into the next. Here each test starts with a propagating logger (caplog works) and
both are restored afterwards.
"""

import logging

import keras
import pytest


@pytest.fixture(autouse=True)
def _restore_process_state():
    policy = keras.config.dtype_policy()
    logger = logging.getLogger("kerastx")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    logger.propagate = True
    yield
    keras.config.set_dtype_policy(policy)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
