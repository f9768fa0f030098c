"""Builds the model of an experiment, sets precision, and loads `init_from` weights."""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from kerastx.config import ExperimentConfig, ModelConfig, TrainingConfig
from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# What each `training.init_parts` entry copies, by variable path (without the model name).
INIT_PARTS = {
    "encoder": "encoder layers and the encoder's final norm",
    "decoder": "decoder layers and the decoder's final norm",
    "embeddings": "token, learned-position and condition embedding tables",
    "output": "the output projection (untied output kernel, output bias, classifier head)",
}


def in_part(path: str, part: str) -> bool:
    """Whether the variable at `path` (e.g. `encoder_layer_0/ffn/kernel`) is in `part`."""
    names = path.split("/")
    if part in ("encoder", "decoder"):
        return names[0].startswith(part + "_")
    if part == "embeddings":
        return names[-1] == "embeddings"
    if part == "output":
        return names[0] == "head" or (
            names[0].endswith("_embedding") and names[-1] in ("output_kernel", "output_bias")
        )
    raise ValueError(f"unknown init part {part!r} (use: {', '.join(INIT_PARTS)}, optimizer)")


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


def init_from(model: keras.Model, optimizer, cfg: TrainingConfig) -> list[str]:
    """Copies weights (all, or the `init_parts`) from another run's checkpoint.

    Trainable variables are matched by path (without the model's name) through the
    source run's `checkpoints/variables.json` and read straight from the checkpoint, so
    the source model and data are not rebuilt. With `init_parts`, only the variables of
    those parts (`INIT_PARTS`, `in_part`) are copied; without, every trainable variable
    must exist in the source. `optimizer` in `init_parts` also loads the optimizer state
    (same optimizer and variables needed).

    Args:
        model: the built model to initialize.
        optimizer: the built optimizer.
        cfg: the training section (`init_from`, `init_parts`).

    Returns:
        The paths of the model variables copied.

    Raises:
        KerastxError: no checkpoint, a variable missing (full init), a shape mismatch
            (one line naming the variable and both shapes), or nothing to copy.
    """
    from kerastx.train.checkpoints import (
        MODEL_KEY,
        CheckpointError,
        VariableBag,
        canonical_path,
        read_manifest,
    )

    prefix = checkpoint_path(cfg.init_from)
    try:
        manifest = read_manifest(prefix)
    except CheckpointError as err:
        raise KerastxError(f"training.init_from: {err}") from None
    reader = tf.train.load_checkpoint(prefix)
    index = {entry["path"]: i for i, entry in enumerate(manifest)}
    parts = [p for p in cfg.init_parts if p != "optimizer"]
    copied = []
    for var in model.trainable_variables:
        path = canonical_path(var)
        if parts and not any(in_part(path, p) for p in parts):
            continue
        i = index.get(path)
        if i is None:
            if not parts:
                raise KerastxError(f"training.init_from: {prefix} has no variable {path}")
            continue
        value = reader.get_tensor(MODEL_KEY.format(i))
        if tuple(value.shape) != tuple(var.shape):
            raise KerastxError(
                f"training.init_from: {path} has shape {tuple(value.shape)} "
                f"in {prefix} but {tuple(var.shape)} here"
            )
        var.assign(np.asarray(value))
        copied.append(path)
    if not copied:
        raise KerastxError(
            f"training.init_from: no variable of parts {cfg.init_parts} found in {prefix}"
        )
    if "optimizer" in cfg.init_parts:
        tf.train.Checkpoint(optimizer=VariableBag(optimizer.variables)).read(
            prefix
        ).expect_partial()
    log.info("initialized %d variables from %s", len(copied), prefix)
    return copied
