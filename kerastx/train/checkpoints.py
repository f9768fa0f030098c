"""Checkpoints that never replace a good one with a broken one.

`tf.train.CheckpointManager` writes the new checkpoint's files first and only then
rewrites the small `checkpoint` state file (atomically, by rename), so a kill during a
write leaves the previous checkpoint as the latest. On restore, a newest checkpoint that
cannot be read (truncated by a full disk or a crash) is reported and the next older one
is used; if none can be read the run stops with an error instead of starting over.

Next to the checkpoints, `variables.json` lists the model's variables in checkpoint order
(path without the model's name, shape, dtype): checkpoints store the model by position
(see `VariableBag`), and this manifest is what lets `training.init_from` copy variables
by name from another run without rebuilding that run's model or data.

In a multi-worker run every worker takes part in the save (variables may live on all of
them) but only the chief writes into the run directory; the others write to a scratch
directory that is deleted right after.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf

from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
MANIFEST = "variables.json"
MODEL_KEY = "model/items/{}/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointError(KerastxError):
    """No checkpoint of a run could be restored."""


class VariableBag(tf.Module):
    """Tracks a Keras object's variables for `tf.train.Checkpoint`, by position.

    Keras 3 layers held in Python lists (a model's encoder layers) and the dropout seed
    generators are invisible to `tf.train.Checkpoint`'s attribute tracking
    (keras-team/keras#19425), so checkpointing the model object itself silently drops
    most weights and all dropout RNG state. `model.variables` lists every variable,
    seed states included, in a deterministic (construction) order.

    Args:
        variables: list of variables.
    """

    def __init__(self, variables):
        super().__init__(name=None)
        self.items = list(variables)


def model_checkpoint(model, **extra) -> tf.train.Checkpoint:
    """A checkpoint of every variable of `model` (and any `extra` trackables)."""
    return tf.train.Checkpoint(model=VariableBag(model.variables), **extra)


def canonical_path(variable) -> str:
    """A variable's path without the model's own (process-dependent) name."""
    return variable.path.split("/", 1)[-1]


def variable_manifest(model) -> list[dict]:
    """`{"path", "shape", "dtype"}` of each model variable, in checkpoint order."""
    return [
        {"path": canonical_path(v), "shape": list(v.shape), "dtype": str(v.dtype)}
        for v in model.variables
    ]


def read_manifest(prefix: str) -> list[dict]:
    """The variable manifest of the run that wrote checkpoint `prefix`.

    Looked up next to the checkpoint, then one directory up (for `best/`, `averaged/`).

    Raises:
        CheckpointError: no manifest found.
    """
    here = os.path.dirname(os.path.abspath(prefix))
    for directory in (here, os.path.dirname(here)):
        path = os.path.join(directory, MANIFEST)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)["variables"]
    raise CheckpointError(f"{prefix}: no {MANIFEST} next to the checkpoint (or one level up)")


def _write_manifest(directory: str, manifest: list[dict]) -> None:
    """Writes `variables.json` atomically, unless it already holds this manifest."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MANIFEST)
    text = json.dumps({"variables": manifest}, indent=1)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Checkpoints:
    """The run's checkpoints: the last K, and the best by the chosen metric.

    Args:
        run_dir: str. The run directory; checkpoints go to `run_dir/checkpoints`.
        objects: dict of trackables (model, optimizer, state variables).
        step: tf.Variable. The trainer's step, used to number checkpoints.
        keep: int. How many recent checkpoints to keep.
        chief: bool. Whether this process writes the real files.
        manifest: list of dict or None. `variable_manifest(model)`, written (by the
            chief) as `variables.json` when given.

    Attributes:
        saved_step: int or None. The step of the newest checkpoint this object saved or
            restored (None before either).
    """

    def __init__(
        self,
        run_dir: str,
        objects: dict,
        step: tf.Variable,
        keep: int,
        chief: bool = True,
        manifest: list[dict] | None = None,
    ):
        self.directory = os.path.join(run_dir, CHECKPOINT_DIR)
        self.chief = chief
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.step = step
        self.saved_step = None
        self._scratch = None
        if chief and manifest is not None:
            _write_manifest(self.directory, manifest)
        target = self.directory
        if not chief:
            self._scratch = tempfile.mkdtemp(prefix="kerastx-worker-ckpt-")
            target = self._scratch
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            target,
            max_to_keep=keep,
            step_counter=step,
            checkpoint_name="ckpt",
        )
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(target, BEST_DIR),
            max_to_keep=1,
            step_counter=step,
            checkpoint_name="best",
        )

    def save(self, best: bool = False) -> str:
        """Writes a checkpoint at the current step (and as the best one if `best`)."""
        manager = self.best_manager if best else self.manager
        path = manager.save(checkpoint_number=self.step)
        if not best:
            self.saved_step = int(self.step.numpy())
        if not self.chief:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return path

    def latest_step(self) -> int | None:
        """The step of the newest listed checkpoint, or None when there is none."""
        path = tf.train.latest_checkpoint(self.directory)
        return None if path is None else int(path.rsplit("-", 1)[1])

    def restore_latest(self) -> str | None:
        """Restores the newest readable checkpoint of the run directory.

        Returns:
            The path restored, or None when the run has no checkpoint (a new run).

        Raises:
            CheckpointError: checkpoints exist but none can be read.
        """
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            if tf.io.gfile.glob(os.path.join(self.directory, "ckpt-*.index")):
                raise CheckpointError(
                    f"{self.directory}: checkpoint files exist but the 'checkpoint' state "
                    f"file is missing; restore it or move the files away to start over"
                )
            return None
        candidates = list(reversed(state.all_model_checkpoint_paths)) or [
            state.model_checkpoint_path
        ]
        problems = []
        for path in candidates:
            if not os.path.isabs(path):
                path = os.path.join(self.directory, path)
            try:
                self.restore(path)
            except Exception as err:  # noqa: BLE001 - any failure means "unreadable"
                first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                problems.append(f"{os.path.basename(path)}: {first}")
                log.warning(
                    "checkpoint %s cannot be restored (%s); trying an older one", path, first
                )
                continue
            if problems:
                log.warning(
                    "resumed from %s; skipped unreadable newer checkpoint(s): %s",
                    path,
                    "; ".join(problems),
                )
            return path
        raise CheckpointError(
            f"{self.directory}: no checkpoint can be restored ({'; '.join(problems)})"
        )

    def restore(self, path: str) -> None:
        """Restores every tracked object from `path`; raises if anything is missing."""
        status = self.checkpoint.read(path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # only the manager's save_counter is left unread
        self.saved_step = int(self.step.numpy())


def average_checkpoints(model, paths: list[str], out_dir: str, step: int) -> str:
    """Averages the model weights of several checkpoints into `out_dir`.

    Float variables are averaged; integer ones (e.g. dropout seed state) are taken from
    the last checkpoint. The model is left holding the averaged weights.

    Args:
        model: a built model of the same architecture.
        paths: list of str. Checkpoint prefixes, oldest first.
        out_dir: str. Where the averaged checkpoint is written.
        step: int. Number of the written checkpoint.

    Returns:
        The path of the averaged checkpoint.
    """
    if not paths:
        raise CheckpointError("no checkpoint to average")
    sums = None
    for path in paths:
        model_checkpoint(model).read(path).expect_partial()
        values = [v.numpy() for v in model.variables]
        if sums is None:
            sums = [v.astype("float64") if v.dtype.kind == "f" else v for v in values]
        else:
            sums = [s + v if v.dtype.kind == "f" else v for s, v in zip(sums, values)]
    for var, total in zip(model.variables, sums):
        if total.dtype.kind == "f":
            var.assign((total / len(paths)).astype(var.dtype))
        else:
            var.assign(total)
    manager = tf.train.CheckpointManager(
        model_checkpoint(model), out_dir, max_to_keep=1, checkpoint_name="ckpt"
    )
    return manager.save(checkpoint_number=step)
