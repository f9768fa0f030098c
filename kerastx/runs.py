"""Opening a finished (or running) run directory: its config, data, and restored model."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from kerastx import tasks
from kerastx.config import CONFIG_FILE, ConfigError, ExperimentConfig, load_experiment, typed
from kerastx.data import build_data
from kerastx.errors import KerastxError
from kerastx.models.build import build_model
from kerastx.train.checkpoints import (
    CheckpointError,
    check_manifest,
    model_checkpoint,
    read_manifest,
    variable_manifest,
)


@dataclasses.dataclass
class Run:
    """A loaded run: resolved config, its task, data module, model with restored weights."""

    cfg: ExperimentConfig
    task: tasks.Task
    data: object
    model: object
    checkpoint: str


def load_config(run_dir: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Reads `run_dir/config.yaml`; overrides may only change resume-safe keys."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isdir(run_dir):
        raise KerastxError(f"{run_dir}: no such run directory")
    if not os.path.exists(path):
        raise KerastxError(f"{run_dir}: not a run directory ({CONFIG_FILE} missing)")
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        names = tuple(
            p for p in key.replace("[", ".").replace("]", "").split(".") if p and not p.isdigit()
        )
        try:
            fld, _ = typed.lookup_field(ExperimentConfig, names)
        except KeyError:
            continue  # load_experiment reports the unknown key
        if not fld.metadata.get("resume_safe"):
            raise ConfigError(
                f"--set {text}: {key} changes what was trained; only "
                f"resume-safe keys (decoding, evaluation, ...) can be changed "
                f"here"
            )
    cfg, _ = load_experiment([path], overrides)
    cfg.run_dir = run_dir
    return cfg


def checkpoint_to_load(run_dir: str) -> str:
    """The averaged checkpoint if the run made one, else the newest checkpoint."""
    averaged = os.path.join(run_dir, "checkpoints", "averaged")
    latest = tf.train.latest_checkpoint(averaged) if os.path.isdir(averaged) else None
    latest = latest or tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if latest is None:
        raise KerastxError(f"{run_dir}: no checkpoint yet (train first: kerastx train ...)")
    return latest


def load_run(run_dir: str, overrides: list[str] | None = None) -> Run:
    """Loads a run's config, data and model (float32), restoring the model's weights."""
    cfg = load_config(run_dir, overrides)
    task = tasks.create(cfg)
    data = build_data(cfg)
    model = build_model(task, data, "none")
    path = checkpoint_to_load(run_dir)
    _check_manifest(path, model)
    status = model_checkpoint(model).read(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return Run(cfg=cfg, task=task, data=data, model=model, checkpoint=path)


def _check_manifest(prefix: str, model) -> None:
    """Refuses a checkpoint whose variables (names, shapes, dtypes) differ from the model's,
    naming the first difference; a run from before manifests is read unchecked."""
    try:
        stored = read_manifest(prefix)
    except CheckpointError:
        stored = None
    check_manifest(prefix, stored, variable_manifest(model))
