"""Builds the model of an experiment, sets precision, and loads `init_from` weights."""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from kerastx.config import ExperimentConfig, ModelConfig, TrainingConfig, load_experiment
from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# Which variables each `training.init_parts` entry names (substrings of variable paths).
PART_PATTERNS = {
    "encoder": ("encoder",),
    "decoder": ("decoder",),
    "embeddings": ("embedding",),
    "output": ("output", "logits"),
}


def set_precision(mixed_precision: str) -> None:
    """Sets the Keras global dtype policy (variables stay float32 under mixed policies)."""
    keras.config.set_dtype_policy(POLICIES[mixed_precision])


def model_kwargs(model_cfg: ModelConfig) -> dict:
    """The constructor arguments of the configured model type."""
    out = {}
    for f in dataclasses.fields(model_cfg):
        applies = f.metadata.get("applies_to")
        if f.name == "type" or (applies and model_cfg.type not in applies):
            continue
        out[f.name] = getattr(model_cfg, f.name)
    return out


def example_batch(model_type: str, num_conditions: int = 0, condition_dim: int = 0) -> dict:
    """A tiny input batch that builds every variable of a model."""
    ids = tf.constant([[5, 6, 2, 0]], tf.int32)
    if model_type == "seq2seq":
        inputs = {"source_ids": ids, "target_in_ids": tf.constant([[1, 5, 6, 0]], tf.int32)}
    elif model_type == "decoder_lm":
        inputs = {"token_ids": tf.constant([[1, 5, 6, 0]], tf.int32)}
    else:
        inputs = {"source_ids": ids}
    if num_conditions:
        inputs["condition"] = tf.constant([0], tf.int32)
    elif condition_dim:
        inputs["condition"] = tf.zeros([1, condition_dim], tf.float32)
    return inputs


def build_model(cfg: ExperimentConfig, data) -> keras.Model:
    """Creates and builds the model of `cfg.model` with vocabulary sizes from `data`.

    Call under the strategy's scope so the variables are distributed.
    """
    from kerastx.models import DecoderLM, EncoderClassifier, Seq2SeqTransformer

    m = cfg.model
    kwargs = model_kwargs(m)
    if m.type == "seq2seq":
        model = Seq2SeqTransformer(
            source_vocab_size=data.source_tokenizer.vocab_size,
            target_vocab_size=data.target_tokenizer.vocab_size,
            **kwargs,
        )
    elif m.type == "decoder_lm":
        model = DecoderLM(vocab_size=data.source_tokenizer.vocab_size, **kwargs)
    else:
        model = EncoderClassifier(
            vocab_size=data.source_tokenizer.vocab_size, num_classes=len(data.labels), **kwargs
        )
    model(example_batch(m.type, m.num_conditions, m.condition_dim), training=False)
    return model


def canonical_path(variable) -> str:
    """A variable's path without the model's own (process-dependent) name."""
    return variable.path.split("/", 1)[-1]


def checkpoint_path(path: str) -> str:
    """A run directory, a checkpoints directory or a checkpoint prefix -> the prefix."""
    for candidate in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(candidate):
            latest = tf.train.latest_checkpoint(candidate)
            if latest:
                return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise KerastxError(f"training.init_from: no checkpoint found at {path}")


def init_from(model: keras.Model, optimizer, cfg: TrainingConfig) -> None:
    """Copies weights (all, or the `init_parts`) from another run's checkpoint.

    The source run's model is rebuilt from its `config.yaml`, restored, and its variables
    are copied by path; a shape mismatch (e.g. another vocabulary) is an error naming the
    variable.
    """
    source = cfg.init_from
    prefix = checkpoint_path(source)
    run_dir = os.path.dirname(os.path.dirname(prefix))
    config_file = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_file):
        raise KerastxError(
            f"training.init_from: {config_file} not found (needed to rebuild the source model)"
        )
    src_cfg, _ = load_experiment([config_file])
    from kerastx.data import build_data
    from kerastx.train.checkpoints import VariableBag, model_checkpoint

    src_model = build_model(src_cfg, build_data(src_cfg))
    model_checkpoint(src_model).read(prefix).expect_partial()
    parts = [p for p in cfg.init_parts if p != "optimizer"]
    patterns = tuple(s for p in parts for s in PART_PATTERNS[p])
    src_vars = {canonical_path(v): v for v in src_model.trainable_variables}
    copied = 0
    for var in model.trainable_variables:
        path = canonical_path(var)
        if patterns and not any(s in path for s in patterns):
            continue
        src = src_vars.get(path)
        if src is None:
            if not patterns:
                raise KerastxError(f"training.init_from: {prefix} has no variable {path}")
            continue
        if tuple(src.shape) != tuple(var.shape):
            raise KerastxError(
                f"training.init_from: {path} has shape {tuple(src.shape)} "
                f"in {prefix} but {tuple(var.shape)} here"
            )
        var.assign(np.asarray(src.numpy()))
        copied += 1
    if not copied:
        raise KerastxError(
            f"training.init_from: no variable of parts {cfg.init_parts} found in {prefix}"
        )
    if "optimizer" in cfg.init_parts:
        tf.train.Checkpoint(optimizer=VariableBag(optimizer.variables)).read(
            prefix
        ).expect_partial()
    log.info("initialized %d variables from %s", copied, prefix)
