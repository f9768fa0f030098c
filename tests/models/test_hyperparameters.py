"""One source of truth: `ModelConfig` and the model constructors agree on keys and defaults.

For every model class and its `model.type`, the arguments the constructor accepts by name
(its own and those it passes on with `**kwargs` to `TransformerModelBase`), less the
data-given sizes and Keras's `name`/`dtype`, must be the `ModelConfig` fields that type
reads (see `keys_read_by`), with `ModelConfig`'s defaults.
"""

from __future__ import annotations

import dataclasses
import inspect

import keras
import pytest

from kerastx import tasks
from kerastx.config.sections import ModelConfig
from kerastx.models import DecoderLM, EncoderClassifier, Seq2SeqTransformer, _base

MODELS = {
    "seq2seq": (Seq2SeqTransformer, (11, 13)),
    "decoder_lm": (DecoderLM, (13,)),
    "encoder_classifier": (EncoderClassifier, (13, 3)),
}
DATA_GIVEN = {"source_vocab_size", "target_vocab_size", "vocab_size", "num_classes"}
KERAS_ARGUMENTS = {"name", "dtype"}


def constructor_defaults(cls):
    """`{name: default}` of every argument `cls(...)` takes by name, following `**kwargs`
    up the kerastx bases (the first declaration of a name wins, as in a call)."""
    defaults = {}
    for klass in cls.__mro__:
        if klass is keras.Model:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        forwards = False
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.kind is parameter.VAR_KEYWORD:
                forwards = True
            elif name != "self" and parameter.kind is not parameter.VAR_POSITIONAL:
                defaults.setdefault(name, parameter.default)
        if not forwards:
            break
    return {
        name: default
        for name, default in defaults.items()
        if name not in DATA_GIVEN | KERAS_ARGUMENTS
    }


def keys_read_by(model_type):
    """The `model:` keys `model_type` reads: its task's `model_keys` (kerastx.tasks)."""
    return set(tasks.get(model_type).model_keys)


def config_defaults(model_type):
    """`{field: default}` of the `ModelConfig` fields that `model_type` reads."""
    defaults = ModelConfig()
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    keys = keys_read_by(model_type)
    assert keys <= fields, f"{model_type} reads keys ModelConfig lacks: {sorted(keys - fields)}"
    return {name: getattr(defaults, name) for name in sorted(keys)}


def _typed(value):
    return type(value).__name__, value  # 1 != 1.0 != True here


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_constructor_arguments_are_the_config_keys(model_type):
    arguments = set(constructor_defaults(MODELS[model_type][0]))
    keys = set(config_defaults(model_type))
    assert arguments == keys, (
        f"{model_type}: constructor arguments missing from ModelConfig: "
        f"{sorted(arguments - keys)}; ModelConfig keys the constructor lacks: "
        f"{sorted(keys - arguments)}"
    )


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_constructor_defaults_are_the_config_defaults(model_type):
    arguments = constructor_defaults(MODELS[model_type][0])
    differ = {
        name: {"constructor": arguments[name], "ModelConfig": default}
        for name, default in config_defaults(model_type).items()
        if name in arguments and _typed(arguments[name]) != _typed(default)
    }
    assert not differ, f"{model_type}: defaults differ: {differ}"


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_a_default_model_holds_the_config_defaults(model_type):
    # The defaults really reach the model (nothing swallowed or overridden on the way).
    cls, sizes = MODELS[model_type]
    config = cls(*sizes).get_config()  # not built: no variables
    expected = config_defaults(model_type)
    actual = {name: config.get(name, "<missing>") for name in expected}
    assert {k: _typed(v) for k, v in actual.items()} == {k: _typed(v) for k, v in expected.items()}


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_the_models_do_not_redeclare_the_shared_arguments(model_type):
    cls = MODELS[model_type][0]
    own = set(inspect.signature(cls.__dict__["__init__"]).parameters)
    assert not own & set(_base.SHARED_ARGUMENTS), "declare shared arguments in _base only"
    assert set(_base.SHARED_ARGUMENTS) <= set(constructor_defaults(cls))


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_get_config_round_trips_with_every_argument_set(model_type):
    cls, sizes = MODELS[model_type]
    options = {"d_model": 8, "num_heads": 2, "ffn_dim": 16, "num_experts": 2, "condition_dim": 3}
    model = cls(*sizes, **options)
    config = model.get_config()
    assert {k: config[k] for k in options} == options
    assert cls.from_config(config).get_config() == config


def test_every_config_key_is_read_by_some_model():
    read = set().union(*(keys_read_by(model_type) for model_type in MODELS))
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"type"}
    assert fields <= read, f"ModelConfig keys no model reads: {sorted(fields - read)}"


def test_unknown_and_positional_shared_arguments_are_errors():
    with pytest.raises(ValueError, match="d_modle"):
        DecoderLM(13, d_modle=8)
    with pytest.raises(TypeError):
        DecoderLM(13, 8)  # the shared arguments are keyword-only
