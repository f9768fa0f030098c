"""Shared test helpers: `run_layer_test` runs the standard checks on one layer.

Used by every test in tests/layers (modelled on keras `testing/test_case.py`).
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf

BASE_CONFIG_KEYS = {"name", "trainable", "dtype"}


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _constructor_params(cls):
    """Explicit `__init__` parameters of `cls` and its bases (own, all)."""
    own, every = set(), set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass in (keras.layers.Layer, keras.Model, object):
            continue
        names = {
            name
            for name, p in inspect.signature(init).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        every |= names
        if klass.__module__.startswith("kerastx"):
            own |= names
    return own, every


def check_config(cls, init_kwargs):
    """`get_config` has exactly the constructor's keys and round-trips."""
    layer = cls(**init_kwargs)
    config = layer.get_config()
    own, every = _constructor_params(cls)
    keys = set(config) - BASE_CONFIG_KEYS
    assert own <= keys, f"constructor arguments missing from get_config: {own - keys}"
    assert keys <= every, f"get_config keys that are no constructor argument: {keys - every}"
    revived = cls.from_config(config)
    assert revived.get_config() == config
    return layer


def _shapes_for(method, input_data):
    params = inspect.signature(method).parameters
    shapes = {}
    for name, value in input_data.items():
        key = f"{name}_shape"
        if key in params and value is not None:
            shapes[key] = tuple(np.shape(value))
    if len(params) == 1 and not shapes:
        first = next(iter(input_data.values()))
        shapes = {next(iter(params)): tuple(np.shape(first))}
    return shapes


def _symbolic(input_data):
    return {
        name: keras.Input(shape=np.shape(value)[1:], dtype=str(np.asarray(value).dtype), name=name)
        for name, value in input_data.items()
    }


def run_layer_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    call_kwargs=None,
    expected_output_dtype="float32",
    mixed_output_dtype="compute",
    allow_unchanged=(),
    run_training_check=True,
    run_mixed_precision_check=True,
    expected_symbolic_output_shape=None,
    tmp_path=None,
):
    """Runs the standard layer checks; returns the eager output (numpy).

    Args:
        cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_data: dict `{call argument name: numpy array}`; the first entry is the
            main input, passed positionally. Tensors only; other call arguments go to
            `call_kwargs`.
        expected_output_shape: tuple. Shape of the (first) output on `input_data`.
        expected_num_trainable_weights: int. Trainable variables after `build`.
        expected_num_non_trainable_weights: int. Defaults to 0.
        call_kwargs: dict of non-tensor call arguments.
        expected_output_dtype: str. Output dtype in float32. Defaults to "float32".
        mixed_output_dtype: "compute" (the policy's compute dtype) or a dtype string.
        allow_unchanged: names (substrings of variable paths) whose weights may keep
            their value after a training step (mathematically zero gradients).
        run_training_check: bool. One gradient step must change the weights.
        run_mixed_precision_check: bool. Runs under mixed_bfloat16 and mixed_float16.
        expected_symbolic_output_shape: tuple or None. Output shape of the symbolic call;
            defaults to `expected_output_shape` with the batch size `None`.
        tmp_path: pathlib.Path for the `.keras` round trip (pytest's tmp_path); None
            skips it.

    Checks, in order: config round trip with exactly the constructor's keys; weight
    counts after an explicit `build`; a symbolic (`keras.Input`) call with shape and
    dtype; an eager call with shape and dtype; one training step; mixed precision;
    `.keras` save and reload with equal outputs.
    """
    call_kwargs = dict(call_kwargs or {})
    names = list(input_data)
    main, extra = names[0], {n: input_data[n] for n in names[1:]}

    # 1. Config.
    layer = check_config(cls, init_kwargs)

    # 2. Build with shapes, count weights.
    layer.build(**_shapes_for(layer.build, input_data))
    assert layer.built
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [
        w.path for w in layer.trainable_weights
    ]
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, [
        w.path for w in layer.non_trainable_weights
    ]

    # 3. Symbolic call.
    symbolic = _symbolic(input_data)
    sym_out = layer(symbolic[main], **{n: symbolic[n] for n in extra}, **call_kwargs)
    sym_first = _first(sym_out)
    expected_symbolic = expected_symbolic_output_shape or (None,) + tuple(expected_output_shape[1:])
    assert tuple(sym_first.shape) == tuple(expected_symbolic), sym_first.shape
    assert keras.backend.standardize_dtype(sym_first.dtype) == expected_output_dtype

    # 4. Eager call.
    outputs = layer(input_data[main], **extra, **call_kwargs)
    first = _first(outputs)
    assert tuple(first.shape) == tuple(expected_output_shape)
    assert keras.backend.standardize_dtype(first.dtype) == expected_output_dtype
    assert np.all(np.isfinite(to_numpy(first)))

    # 5. One training step changes the weights.
    if run_training_check:
        before = [to_numpy(w) for w in layer.trainable_weights]
        with tf.GradientTape() as tape:
            out = _first(layer(input_data[main], **extra, **call_kwargs, training=True))
            # A fixed random direction: mean(out ** 2) would be flat after a final norm.
            direction = np.random.default_rng(0).normal(size=out.shape).astype("float32")
            loss = keras.ops.mean(keras.ops.cast(out, "float32") * direction)
            if layer.losses:
                loss = loss + keras.ops.sum(keras.ops.stack(layer.losses))
        grads = tape.gradient(loss, layer.trainable_weights)
        missing = [w.path for w, g in zip(layer.trainable_weights, grads) if g is None]
        assert not missing, f"no gradient for {missing}"
        for w, g in zip(layer.trainable_weights, grads):
            w.assign(w - 0.1 * tf.convert_to_tensor(g))  # densifies IndexedSlices
        unchanged = [
            w.path
            for w, b in zip(layer.trainable_weights, before)
            if np.array_equal(to_numpy(w), b)
            and not any(name in w.path for name in allow_unchanged)
        ]
        assert not unchanged, f"weights unchanged by a training step: {unchanged}"

    # 6. Mixed precision.
    if run_mixed_precision_check:
        for policy in ("mixed_bfloat16", "mixed_float16"):
            mixed = cls(**{**init_kwargs, "dtype": policy})
            out = _first(mixed(input_data[main], **extra, **call_kwargs))
            want = mixed.compute_dtype if mixed_output_dtype == "compute" else mixed_output_dtype
            assert keras.backend.standardize_dtype(out.dtype) == want, (policy, out.dtype)
            assert np.all(np.isfinite(to_numpy(keras.ops.cast(out, "float32"))))
            for w in mixed.weights:
                assert keras.backend.standardize_dtype(w.dtype) in ("float32", "int32"), w.path

    # 7. `.keras` save and reload.
    if tmp_path is not None:
        sym_out = layer(symbolic[main], **{n: symbolic[n] for n in extra}, **call_kwargs)
        model = keras.Model(inputs=symbolic, outputs=sym_out)
        path = str(tmp_path / f"{cls.__name__}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        expected = [to_numpy(x) for x in keras.tree.flatten(model(input_data))]
        actual = [to_numpy(x) for x in keras.tree.flatten(reloaded(input_data))]
        for e, a in zip(expected, actual):
            np.testing.assert_array_equal(a, e)
    return to_numpy(first)
