"""Opening a finished (or running) run directory: its config, data, and restored model."""

from __future__ import annotations

import dataclasses
import logging
import os

from kerastx import tasks
from kerastx.config import CONFIG_FILE, ConfigError, ExperimentConfig, load_experiment, typed
from kerastx.config.rundir import AVERAGED_DIR
from kerastx.data import build_data
from kerastx.errors import KerastxError
from kerastx.models.build import build_model
from kerastx.train.checkpoints import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CheckpointError,
    check_manifest,
    listed_checkpoints,
    model_checkpoint,
    read_checkpoint,
    read_manifest,
    restore_newest_readable,
    variable_manifest,
)

log = logging.getLogger("kerastx")


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


def _step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def checkpoint_candidates(
    run_dir: str, choice: str = "auto", best_metric: str = "loss"
) -> list[tuple[str, str]]:
    """The checkpoints `load_run` tries, in order, each with why (`export.checkpoint`).

    best: `checkpoints/best/` (by `evaluation.best_metric`); averaged:
    `checkpoints/averaged/` (`training.average_last`); last: the run's checkpoints,
    newest first (an unreadable one falls back to the one before); auto: averaged if
    the run made one (and no newer checkpoint was written since), else best if it has
    one, else last, each falling back to the next.

    Args:
        run_dir: str. The run directory.
        choice: str. `export.checkpoint`: auto, best, last or averaged.
        best_metric: str. `evaluation.best_metric`, named in the reason.

    Returns:
        list of `(path, reason)`; reason e.g. "export.checkpoint=auto: best by loss".

    Raises:
        KerastxError: the run has no checkpoint, or none of the kind asked for.
    """
    root = os.path.join(run_dir, CHECKPOINT_DIR)
    last = listed_checkpoints(root)
    best = _listed_or_none(os.path.join(root, BEST_DIR))
    averaged = _listed_or_none(os.path.join(root, AVERAGED_DIR))
    setting = f"export.checkpoint={choice}"
    if choice == "best" and not best:
        raise KerastxError(
            f"{run_dir}: export.checkpoint=best but the run has no best checkpoint "
            f"({os.path.join(root, BEST_DIR)} is written when a dev evaluation improves "
            f"evaluation.best_metric={best_metric}); use export.checkpoint=last or auto"
        )
    if choice == "averaged" and not averaged:
        raise KerastxError(
            f"{run_dir}: export.checkpoint=averaged but the run has no averaged checkpoint "
            f"({os.path.join(root, AVERAGED_DIR)} is written at the end of training when "
            f"training.average_last > 1); use export.checkpoint=last or auto"
        )
    kinds = {
        "averaged": [(p, f"{setting}: averaged (training.average_last)") for p in averaged],
        "best": [(p, f"{setting}: best by {best_metric}") for p in best],
        "last": [
            (p, f"{setting}: {'the newest' if i == 0 else 'the newest readable'} checkpoint")
            for i, p in enumerate(last)
        ],
    }
    if choice != "auto":
        candidates = kinds[choice]
    else:
        if averaged and last and _step(averaged[0]) < _step(last[0]):
            kinds["averaged"] = []  # made before training went on: not this run's end
        candidates = kinds["averaged"] + kinds["best"] + kinds["last"]
    if not candidates:
        raise KerastxError(f"{run_dir}: no checkpoint yet (train first: kerastx train ...)")
    return candidates


def _listed_or_none(directory: str) -> list[str]:
    """`listed_checkpoints`, or none (with a warning) where the state file is missing: a
    best or averaged checkpoint whose write was interrupted."""
    try:
        return listed_checkpoints(directory)
    except CheckpointError as err:
        log.warning("%s; ignored", err)
        return []


def load_run(run_dir: str, overrides: list[str] | None = None) -> Run:
    """Loads a run's config, data and model (float32), restoring the model's weights.

    The checkpoint is chosen by `export.checkpoint` (`checkpoint_candidates`; an
    override such as `export.checkpoint=best` changes it); one that cannot be read is
    named in a warning and the next candidate is loaded. One INFO line says which
    checkpoint was loaded and why.

    Raises:
        KerastxError: no such run, no checkpoint (of the kind asked for), none of them
            readable, or a model that differs from the checkpoint's (manifest).
    """
    cfg = load_config(run_dir, overrides)
    candidates = checkpoint_candidates(run_dir, cfg.export.checkpoint, cfg.evaluation.best_metric)
    task = tasks.create(cfg)
    data = build_data(cfg)
    model = build_model(task, data, "none")

    def restore(path: str) -> None:
        _check_manifest(path, model)
        status = read_checkpoint(model_checkpoint(model), path)
        status.expect_partial()
        status.assert_existing_objects_matched()

    path = restore_newest_readable(
        [p for p, _ in candidates], restore, os.path.join(run_dir, CHECKPOINT_DIR)
    )
    log.info("loaded %s (%s)", os.path.relpath(path, run_dir), dict(candidates)[path])
    return Run(cfg=cfg, task=task, data=data, model=model, checkpoint=path)


def _check_manifest(prefix: str, model) -> None:
    """Refuses a checkpoint whose variables (names, shapes, dtypes) differ from the model's,
    naming the first difference; a run from before manifests is read unchecked."""
    try:
        stored = read_manifest(prefix)
    except CheckpointError:
        stored = None
    check_manifest(prefix, stored, variable_manifest(model))
