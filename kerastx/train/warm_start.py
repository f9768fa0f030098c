"""`training.init_from`: starting a run from another run's weights (all, or some parts)."""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from kerastx.config import TrainingConfig
from kerastx.config.sections import INIT_PARTS
from kerastx.errors import KerastxError
from kerastx.train.checkpoints import (
    MODEL_KEY,
    CheckpointError,
    VariableBag,
    canonical_path,
    guarded_read,
    listed_checkpoints,
    read_checkpoint,
    read_manifest,
    restore_newest_readable,
)

log = logging.getLogger("kerastx")


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
    raise ValueError(f"unknown init part {part!r} (use: {', '.join(INIT_PARTS)})")


def checkpoint_paths(path: str) -> list[str]:
    """A run directory, a checkpoints directory or a checkpoint prefix -> the prefixes to
    try, newest first (a directory's older checkpoints back up an unreadable newest)."""
    try:
        for candidate in (os.path.join(path, "checkpoints"), path):
            if os.path.isdir(candidate):
                listed = listed_checkpoints(candidate)
                if listed:
                    return listed
    except CheckpointError as err:
        raise KerastxError(f"training.init_from: {err}") from None
    if tf.io.gfile.exists(path + ".index"):
        return [path]
    raise KerastxError(f"training.init_from: no checkpoint found at {path}")


def init_from(model, optimizer, cfg: TrainingConfig) -> list[str]:
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

    A run (or checkpoints) directory's newest checkpoint that cannot be read is named in
    a warning and the one before is used (`checkpoints.restore_newest_readable`).

    Raises:
        KerastxError: no checkpoint, none readable (one line naming each), a variable
            missing (full init), a shape mismatch (one line naming the variable and both
            shapes), or nothing to copy.
    """
    paths = checkpoint_paths(cfg.init_from)
    copied: list[str] = []

    def copy(prefix: str) -> None:
        copied[:] = _copy(model, optimizer, cfg, prefix)

    try:
        prefix = restore_newest_readable(paths, copy, os.path.dirname(paths[0]))
    except CheckpointError as err:
        raise KerastxError(
            f"training.init_from: {err}; point training.init_from at a readable checkpoint"
        ) from None
    log.info("initialized %d variables from %s", len(copied), prefix)
    return copied


def _copy(model, optimizer, cfg: TrainingConfig, prefix: str) -> list[str]:
    """Copies the variables of `init_from` from checkpoint `prefix`; see `init_from`."""
    try:
        manifest = read_manifest(prefix)
    except CheckpointError as err:
        raise KerastxError(f"training.init_from: {err}") from None
    reader = guarded_read(prefix, tf.train.load_checkpoint, prefix)
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
        value = guarded_read(prefix, reader.get_tensor, MODEL_KEY.format(i))
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
        optimizer_checkpoint = tf.train.Checkpoint(optimizer=VariableBag(optimizer.variables))
        read_checkpoint(optimizer_checkpoint, prefix).expect_partial()
    return copied
