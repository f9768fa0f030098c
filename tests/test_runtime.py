"""No process-global state from library calls (issue 12): each setting is scoped.

The end-to-end check: two trainings in one process, with different precision and seeds,
log exactly what each logs in a process of its own.
"""

import json
import logging
import os
import random
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from kerastx import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dtype_policy_applies_inside_and_is_restored():
    before = keras.config.dtype_policy().name
    with runtime.dtype_policy("bfloat16"):
        layer = keras.layers.Dense(2)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before
    assert layer.dtype_policy.name == "mixed_bfloat16"  # the layer keeps its own


def test_seeded_is_reproducible_and_restores_every_generator():
    tf_seed = tf.compat.v1.get_seed(None)[0]
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    with runtime.seeded(3):
        first = (random.random(), float(np.random.rand()), float(keras.random.uniform(())))
    with runtime.seeded(3):
        again = (random.random(), float(np.random.rand()), float(keras.random.uniform(())))
    assert first == again
    # The generators continue as if the blocks had not run.
    assert (random.random(), np.random.rand()) == expected
    assert tf.compat.v1.get_seed(None)[0] == tf_seed


def test_op_determinism_is_restored_through_tensorflows_own_functions():
    # TensorFlow exports enable_op_determinism only; the query and the inverse that
    # runtime uses are TensorFlow's internals, pinned here to the TF range in setup.cfg.
    assert callable(tf_config.is_op_determinism_enabled)
    assert callable(tf_config.disable_op_determinism)
    assert not tf_config.is_op_determinism_enabled()
    with runtime.op_determinism(True):
        assert tf_config.is_op_determinism_enabled()
    assert not tf_config.is_op_determinism_enabled()
    with runtime.op_determinism(False):
        assert not tf_config.is_op_determinism_enabled()


_TRAIN = """
import json, sys
import keras, logging
from tensorflow.python.framework import config as tf_config
from kerastx import workflow
from tests.train import util
from tests.train.fakes import FakeData
out = {}
for name in sys.argv[2:]:
    precision, seed = name.split("-")
    cfg = util.make_cfg(
        sys.argv[1] + "/" + name, "training.train_steps=8", "training.log_every=1",
        f"training.mixed_precision={precision}", f"seed={seed}", "model.dropout=0.1",
    )
    workflow.train(cfg, data=FakeData())
    out[name] = [r["loss"] for r in util.read_log(sys.argv[1] + "/" + name)]
    out[name + " state"] = [
        keras.config.dtype_policy().name,
        tf_config.is_op_determinism_enabled(),
        logging.getLogger("kerastx").propagate,
    ]
print("RESULT " + json.dumps(out))
"""


def _train(tmp_path, tag, *names):
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(tmp_path / tag), *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_two_trainings_in_one_process_equal_two_processes(tmp_path):
    together = _train(tmp_path, "together", "bfloat16-1", "none-2")
    alone_first = _train(tmp_path, "first", "bfloat16-1")
    alone_second = _train(tmp_path, "second", "none-2")
    assert together["bfloat16-1"] == alone_first["bfloat16-1"]
    assert together["none-2"] == alone_second["none-2"]
    assert len(together["none-2"]) == 8
    assert together["bfloat16-1"] != together["none-2"]
    # After each training: float32 policy, op determinism off, the logger propagating.
    for name in ("bfloat16-1", "none-2"):
        assert together[name + " state"] == ["float32", False, True]


def test_cli_logging_reaches_a_handler_once(capsys):
    from kerastx import cli

    cli.configure_logging()
    cli.configure_logging()
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "kerastx_cli", 0)]
    assert len(handlers) == 1
    assert logging.getLogger("kerastx").propagate
    # It writes to the current stderr (here pytest's capture), not the one at setup.
    logging.getLogger("kerastx").warning("to the current stderr")
    assert "to the current stderr" in capsys.readouterr().err


def test_cli_messages_print_once_when_a_library_calls_basic_config():
    # absl calls logging.basicConfig() on its first message; the CLI's root handler
    # makes that a no-op, so kerastx's lines are not printed twice.
    code = (
        "import logging\n"
        "from kerastx import cli\n"
        "cli.configure_logging()\n"
        "logging.basicConfig()\n"
        "logging.getLogger('kerastx.data').info('train[0]: 10 examples')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stderr.splitlines().count("train[0]: 10 examples") == 1
    assert "INFO:kerastx" not in proc.stderr
