"""Checkpoints that never replace a good one with a broken one, nor restore a changed model.

`tf.train.CheckpointManager` writes the new checkpoint's files first and only then
rewrites the small `checkpoint` state file (atomically, by rename), so a kill during a
write leaves the previous checkpoint as the latest. On restore, a newest checkpoint that
cannot be read (truncated by a full disk or a crash, deleted, overwritten) is reported and
the next older one is used; if none can be read the run stops with an error instead of
starting over. Only what TF raises while reading the files counts as "cannot be read"
(`READ_ERRORS`); any other exception is a bug and propagates.

Next to the checkpoints, `variables.json` lists the model's variables in checkpoint order
(path without the model's name, shape, dtype): checkpoints store the model by position
(see `VariableBag`), so this manifest is what says which variable each position holds. It
is written once, at the run's first start, and from then on compared with the model
before any checkpoint is read: a variable that differs in path, shape or dtype (or a
different count) stops the run with one line naming the first such position, instead of
values landing in the wrong variables or a misleading "cannot be read". It also lets
`training.init_from` copy variables by name from another run without rebuilding that
run's model or data. Two exceptions to "written once": a run directory without any
checkpoint takes the manifest of the model started in it (there is nothing to protect),
and a run written before this check (no `variables.json`) is restored as before, with TF
checking each position's shape and dtype, and gets its `variables.json` from the model
once a checkpoint restored.

In a multi-worker run every worker takes part in the save (variables may live on all of
them) but only the chief writes into the run directory; the others write to a scratch
directory that is deleted right after.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf

from kerastx.config.rundir import BEST_DIR, CHECKPOINT_DIR, VARIABLES_FILE
from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

MANIFEST = VARIABLES_FILE
MODEL_KEY = "model/items/{}/.ATTRIBUTES/VARIABLE_VALUE"

# What `tf.train.Checkpoint.read` raises for a damaged checkpoint (TF 2.21, found by
# damaging one; tests/train/test_checkpoint_manifest.py keeps each case):
# - tf.errors.OpError: a plain OpError (code UNKNOWN) for an `.index` that is garbage or
#   truncated ("not an sstable"), a `.data` file that is deleted or overwritten ("length
#   checksum does not match"); NotFoundError for a deleted `.index`; DataLossError for a
#   flipped byte in `.data` ("Checksum does not match"); InvalidArgumentError for a
#   stored dtype that differs from the variable's.
# - IndexError: a truncated or emptied `.data` file ("Read less bytes than requested":
#   pybind's translation of OUT_OF_RANGE, which TF's reader does not convert).
# - ValueError: a stored shape that does not fit the variable (only reachable where no
#   manifest was compared, or in the optimizer and state variables).
# Only the read call itself is guarded, so these never come from kerastx code.
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)

# Keras names each unnamed `SeedGenerator` (the dropout RNG state) `seed_generator_<N>`
# from a process-wide counter, so the same model built twice in one process, or after
# other models, gets other numbers; every other kerastx layer has an explicit name.
_SEED_GENERATOR = re.compile(r"seed_generator(_\d+)?")


class CheckpointError(KerastxError):
    """No checkpoint of a run could be restored."""


class ManifestMismatchError(CheckpointError):
    """The model differs from the one the run's checkpoints were written from."""


class UnreadableCheckpointError(CheckpointError):
    """One checkpoint's files cannot be read (damaged, truncated, missing).

    Attributes:
        path: str. The checkpoint prefix.
        reason: str. The first line of what TF raised.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


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
        manifest = _load_manifest(os.path.join(directory, MANIFEST))
        if manifest is not None:
            return manifest
    raise CheckpointError(f"{prefix}: no {MANIFEST} next to the checkpoint (or one level up)")


def _load_manifest(path: str) -> list[dict] | None:
    """The variables listed in the manifest file `path`, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)["variables"]
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: not a variable manifest ({err})") from None


def _write_manifest(directory: str, manifest: list[dict]) -> None:
    """Writes `variables.json` atomically (a temporary file, then a rename)."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=MANIFEST + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"variables": manifest}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, MANIFEST))
    except BaseException:
        os.remove(tmp)
        raise


def _describe(entry: dict) -> str:
    return f"{entry['path']} {tuple(entry['shape'])} {entry['dtype']}"


def _key(entry: dict) -> tuple:
    """What must agree between two manifests at one position."""
    parts = entry["path"].split("/")
    path = "/".join("seed_generator" if _SEED_GENERATOR.fullmatch(p) else p for p in parts)
    return path, tuple(entry["shape"]), str(entry["dtype"])


def check_manifest(where: str, stored: list[dict] | None, current: list[dict]) -> None:
    """Raises `ManifestMismatchError` (one line, prefixed by `where`) when the manifests
    differ; nothing to compare when `stored` is None (a run from before manifests)."""
    difference = None if stored is None else manifest_difference(stored, current)
    if difference:
        raise ManifestMismatchError(
            f"{where}: {difference}; the model config changed since the run was trained"
        )


def manifest_difference(stored: list[dict], current: list[dict]) -> str | None:
    """The first difference between two variable manifests, in words; None if they agree.

    Compared position by position: path (the seed generators' process-dependent numbers
    aside), shape and dtype; then the count.

    Args:
        stored: list of dict. The manifest the run's checkpoints were written with.
        current: list of dict. `variable_manifest` of the model at hand.

    Returns:
        One line, e.g. "variable 17 is a/kernel (256, 1024) float32 in the checkpoint but
        a/kernel (256, 512) float32 in this model", or None.
    """
    for i, (old, new) in enumerate(zip(stored, current)):
        if _key(old) != _key(new):
            text = (
                f"variable {i} is {_describe(old)} in the checkpoint "
                f"but {_describe(new)} in this model"
            )
            if len(stored) != len(current):
                text += f" (the checkpoint has {len(stored)} variables, this model {len(current)})"
            return text
    if len(stored) == len(current):
        return None
    common = min(len(stored), len(current))
    extra, where = (
        (stored[common], "this model")
        if len(stored) > common
        else (current[common], "the checkpoint")
    )
    return (
        f"the checkpoint has {len(stored)} variables but this model has {len(current)}; "
        f"variable {common} ({_describe(extra)}) is not in {where}"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


class Checkpoints:
    """The run's checkpoints: the last K, and the best by the chosen metric.

    Args:
        run_dir: str. The run directory; checkpoints go to `run_dir/checkpoints`.
        objects: dict of trackables (model, optimizer, state variables).
        step: tf.Variable. The trainer's step, used to number checkpoints.
        keep: int. How many recent checkpoints to keep.
        chief: bool. Whether this process writes the real files.
        manifest: list of dict or None. `variable_manifest(model)`: written (by the
            chief) as `variables.json` at the run's first start, and compared with the
            stored one before every restore. None: no manifest written or checked.

    Attributes:
        saved_step: int or None. The step of the newest checkpoint this object saved or
            restored (None before either).
        manifest_path: str. The run's `variables.json`.
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
        self.manifest = manifest
        self.manifest_path = os.path.join(self.directory, MANIFEST)
        self._manifest_after_restore = False  # a run from before manifests: see restore()
        self._scratch = None
        if chief and manifest is not None:
            self._start_manifest()
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

    def _has_checkpoints(self) -> bool:
        """Whether the run directory holds checkpoint files (also `best/`, `averaged/`)."""
        return any(
            tf.io.gfile.glob(os.path.join(self.directory, *parts, "*.index"))
            for parts in ((), ("*",))
        )

    def _start_manifest(self) -> None:
        """Writes `variables.json` at the first start; later ones leave it to compare."""
        stored = _load_manifest(self.manifest_path)
        if stored is not None and manifest_difference(stored, self.manifest) is None:
            return
        if self._has_checkpoints():
            # A different manifest is refused by check_manifest() at the restore; a run
            # without one gets it once a checkpoint restored (which proves it fits).
            self._manifest_after_restore = stored is None
            return
        if stored is not None:
            log.info("%s describes no checkpoint: replaced by this model's", self.manifest_path)
        _write_manifest(self.directory, self.manifest)

    def check_manifest(self) -> None:
        """Compares the run's `variables.json` with the model's manifest.

        Nothing to compare without a manifest on either side (no `manifest` given, or a
        run written before manifests existed).

        Raises:
            ManifestMismatchError: a variable differs in path, shape or dtype, or the
                count differs; one line naming the first differing position.
        """
        stored = None if self.manifest is None else _load_manifest(self.manifest_path)
        check_manifest(self.manifest_path, stored, self.manifest)

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

    def restore_latest(self, also=None) -> str | None:
        """Restores the newest readable checkpoint of the run directory.

        Args:
            also: callable(step) or None. Restores what belongs to the checkpoint of
                that step but lives outside it (the streamed input's iterator states);
                an `UnreadableCheckpointError` from it skips to an older checkpoint.

        Returns:
            The path restored, or None when the run has no checkpoint (a new run).

        Raises:
            CheckpointError: checkpoints exist but none can be read, or see `restore`.
        """
        candidates = listed_checkpoints(self.directory)
        if not candidates:
            return None
        if also is None:
            return restore_newest_readable(candidates, self.restore, self.directory)

        def restore_both(path):
            also(int(path.rsplit("-", 1)[1]))  # first: a missing data state reads nothing
            self.restore(path)

        return restore_newest_readable(candidates, restore_both, self.directory)

    def kept_steps(self) -> set[int]:
        """The steps of the recent checkpoints the manager keeps."""
        return {int(p.rsplit("-", 1)[1]) for p in self.manager.checkpoints}

    def restore(self, path: str) -> None:
        """Restores every tracked object from `path`, once the model's manifest agrees.

        Raises:
            ManifestMismatchError: the model differs from the run's (nothing is read).
            UnreadableCheckpointError: TF cannot read the checkpoint (`READ_ERRORS`).
            CheckpointError: the checkpoint lacks an object tracked here.
        """
        self.check_manifest()
        status = read_checkpoint(self.checkpoint, path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as err:
            raise CheckpointError(
                f"{path} does not hold every tracked object of this trainer "
                f"({_first_line(err)}); it was written by another config or kerastx version"
            ) from None
        status.expect_partial()  # only the manager's save_counter is left unread
        self.saved_step = int(self.step.numpy())
        if self._manifest_after_restore:
            _write_manifest(self.directory, self.manifest)
            self._manifest_after_restore = False
            log.info("%s written: the run had none (restored %s)", self.manifest_path, path)


def listed_checkpoints(directory: str) -> list[str]:
    """The checkpoint prefixes a directory's `checkpoint` state file lists, newest first.

    Returns:
        list of str: prefixes under `directory` (relative if it is), or absolute where the
        state file holds absolute paths; empty when the directory has no checkpoint.

    Raises:
        CheckpointError: checkpoint files exist but the state file is missing.
    """
    state = tf.train.get_checkpoint_state(directory) if os.path.isdir(directory) else None
    if state is None:
        if tf.io.gfile.glob(os.path.join(directory, "*.index")):
            raise CheckpointError(
                f"{directory}: checkpoint files exist but the 'checkpoint' state "
                f"file is missing; restore it or move the files away to start over"
            )
        return []
    # get_checkpoint_state has joined relative entries with `directory` already (joining
    # again doubled a relative run dir: run/checkpoints/run/checkpoints/ckpt-1).
    return list(reversed(state.all_model_checkpoint_paths)) or [state.model_checkpoint_path]


def restore_newest_readable(paths: list[str], restore, where: str) -> str:
    """Restores the first of `paths` (newest first) that can be read: the fallback that
    the trainer's resume, `runs.load_run` (evaluate, predict, export, score) and
    `training.init_from` share.

    Each checkpoint that cannot be read (`restore` raised `UnreadableCheckpointError`) is
    named in a warning and the next one is tried; any other error propagates at once.

    Args:
        paths: list of str. Checkpoint prefixes, in order of preference.
        restore: callable(path). Reads the checkpoint into the objects at hand.
        where: str. What the message names when none can be read (a directory).

    Returns:
        The path restored.

    Raises:
        CheckpointError: `paths` is empty or none can be read (one line naming each).
    """
    problems = []
    for i, path in enumerate(paths):
        try:
            restore(path)
        except UnreadableCheckpointError as err:
            problems.append(f"{os.path.basename(path)}: {err.reason}")
            log.warning(
                "checkpoint %s cannot be restored (%s)%s",
                path,
                err.reason,
                "; trying an older one" if i + 1 < len(paths) else "",
            )
            continue
        if problems:
            log.warning(
                "restored %s; skipped unreadable newer checkpoint(s): %s",
                path,
                "; ".join(problems),
            )
        return path
    if not problems:
        raise CheckpointError(f"{where}: no checkpoint to restore")
    raise CheckpointError(f"{where}: no checkpoint can be restored ({'; '.join(problems)})")


def read_checkpoint(checkpoint: tf.train.Checkpoint, path: str):
    """`checkpoint.read(path)` (the load status), through `guarded_read`."""
    return guarded_read(path, checkpoint.read, path)


def guarded_read(path: str, read, *args):
    """`read(*args)`, a read of checkpoint `path`: what TF raises for damaged files
    (`READ_ERRORS`) becomes `UnreadableCheckpointError(path, first line)`."""
    try:
        return read(*args)
    except READ_ERRORS as err:
        raise UnreadableCheckpointError(path, _first_line(err)) from err


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
