"""Each private Keras or TensorFlow API kerastx relies on, pinned to the releases it allows.

kerastx uses a private API only where no public one serves (the module that uses it
says why). `setup.cfg` allows one minor release of Keras and of TensorFlow, the ones
these tests ran against; moving a pin starts with this file passing on the new release.

- `kerastx.train.optimizers`: overrides Keras's TF-backend optimizer hook
  `_all_reduce_sum_gradients` (behaviour: tests/train/test_optimizers.py).
- `kerastx.tfutil.expected_retracing`: sets the `tf.function` attribute
  `_omit_frequent_tracing_warning`.
- `kerastx.layers.MultiHeadAttention`: subclasses `keras.layers.MultiHeadAttention`,
  overrides its `_compute_attention` and reads its built sublayers and equations (the
  key/value cache needs the projections apart; behaviour: tests/layers).
- `kerastx.runtime.op_determinism`: TensorFlow's `is_op_determinism_enabled` and
  `disable_op_determinism` (tests/test_runtime.py).
"""

import configparser
import inspect
import logging
import os
from importlib import metadata

import keras
import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.version import Version

from kerastx.tfutil import expected_retracing
from kerastx.train import optimizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINNED = ("keras", "tensorflow")


def _install_requires() -> dict:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {r.name: r.specifier for r in requirements}


@pytest.mark.parametrize("name", PINNED)
def test_the_pin_allows_exactly_one_minor_release(name):
    specifier = _install_requires()[name]
    bounds = {spec.operator: Version(spec.version) for spec in specifier}
    assert set(bounds) == {">=", "<"}, specifier
    low, high = bounds[">="], bounds["<"]
    assert high == Version(f"{low.major}.{low.minor + 1}"), specifier


@pytest.mark.parametrize("name", PINNED)
def test_the_installed_release_is_the_pinned_one(name):
    installed = metadata.version(name)
    specifier = _install_requires()[name]
    assert specifier.contains(installed, prereleases=True), (name, installed, str(specifier))


def _keras_hook_owner():
    """The Keras class that defines `_all_reduce_sum_gradients` for `keras.optimizers.Adam`."""
    owners = [c for c in keras.optimizers.Adam.__mro__ if "_all_reduce_sum_gradients" in vars(c)]
    assert owners, "Keras's optimizers no longer define _all_reduce_sum_gradients"
    return owners[0]


def test_keras_still_all_reduces_through_the_hook_kerastx_overrides():
    owner = _keras_hook_owner()
    assert owner.__module__ == "keras.src.backend.tensorflow.optimizer"
    ours = inspect.signature(optimizers._PreReduced._all_reduce_sum_gradients)
    assert inspect.signature(owner._all_reduce_sum_gradients) == ours
    # `apply` reaches the hook through `_backend_update_step`, with the pairs it updates.
    source = inspect.getsource(owner._backend_update_step)
    assert "grads_and_vars = self._all_reduce_sum_gradients(grads_and_vars)" in source


@pytest.mark.parametrize("cls", [optimizers.Adam, optimizers.AdamW, optimizers.Adafactor])
def test_the_override_comes_first_in_every_kerastx_optimizer(cls):
    assert cls._all_reduce_sum_gradients is optimizers._PreReduced._all_reduce_sum_gradients
    assert issubclass(cls, _keras_hook_owner())


def test_tf_function_still_reads_the_retracing_warning_switch():
    function = tf.function(lambda x: x)
    assert function._omit_frequent_tracing_warning is False
    source = inspect.getsource(type(function).__call__)
    assert "self._omit_frequent_tracing_warning" in source
    assert expected_retracing(function) is function
    assert function._omit_frequent_tracing_warning is True


def _retracing_warnings(function) -> list[str]:
    """The retracing warnings TensorFlow logs while `function` traces 7 times in a row."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        for length in range(1, 8):
            function(tf.zeros([length]))
    finally:
        logger.removeHandler(handler)
    return [r.getMessage() for r in records if "triggered tf.function retracing" in r.getMessage()]


def test_the_switch_silences_only_the_marked_function():
    # Two Python functions: TensorFlow counts traces per function (and warns only
    # a few times per function in a process).
    def unmarked(x):
        return x + 1.0

    def marked(x):
        return x + 1.0

    assert _retracing_warnings(tf.function(unmarked))
    assert _retracing_warnings(expected_retracing(tf.function(marked))) == []


# The private members of keras.layers.MultiHeadAttention that kerastx's subclass reads.
MHA_ATTRIBUTES = (
    "_num_heads",
    "_key_dim",
    "_query_dense",
    "_key_dense",
    "_value_dense",
    "_output_dense",
    "_inverse_sqrt_key_dim",
    "_dot_product_equation",
    "_combine_equation",
    "_dropout",
    "_dropout_layer",
    "_output_shape",
)


def test_keras_multi_head_attention_still_has_what_the_subclass_reads():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    x = keras.ops.ones((1, 3, 8))
    layer(x, x)
    missing = [name for name in MHA_ATTRIBUTES if not hasattr(layer, name)]
    assert missing == []
    params = list(inspect.signature(keras.layers.MultiHeadAttention._compute_attention).parameters)
    assert params[:5] == ["self", "query", "key", "value", "attention_mask"]
