"""The run directory: what makes one, the resolved config in it, the resume check.

A kerastx run directory holds `config.yaml` starting with `HEADER` (written by
`write_resolved` before anything else of a training), or at least a checkpoints
directory with kerastx's variable manifest (a run whose config was lost). Training
writes only into such a directory, a new one, or an empty one (an empty one holding
only a `kerastx vocab` output or the lock file counts as empty): a non-empty
directory that is not a run (`/`, a home directory, someone's project) is refused
before anything is written to it (`check_run_dir`).
"""

from __future__ import annotations

import glob
import logging
import os
import re

from kerastx.config import typed, yamlio
from kerastx.config.errors import ConfigError
from kerastx.config.sections import ExperimentConfig
from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

CONFIG_FILE = "config.yaml"
HEADER = "# Resolved kerastx experiment: every field, defaults included.\n"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # checkpoints/best/: the best checkpoint by evaluation.best_metric
AVERAGED_DIR = "averaged"  # checkpoints/averaged/: training.average_last
LOCK_FILE = ".lock"  # kerastx.train.run_lock
VOCAB_DIR = "vocab"  # kerastx.data.building; its manifest.json marks it as kerastx's
VARIABLES_FILE = "variables.json"  # kerastx.train.checkpoints.MANIFEST


class RunDirError(KerastxError):
    """The run directory cannot be used: not a kerastx run, not writable, in use."""


def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The full resolved config as YAML: every field, defaults included."""
    return HEADER + yamlio.dumps(typed.to_data(cfg))


def config_changes(old: dict, new: dict) -> list[tuple[tuple, object, object]]:
    """`(path, old, new)` for each leaf that differs between two resolved configs."""
    flat_old, flat_new = typed.flatten(old), typed.flatten(new)
    changes = []
    for path in sorted(set(flat_old) | set(flat_new), key=str):
        before, after = flat_old.get(path, "<absent>"), flat_new.get(path, "<absent>")
        if before != after:
            changes.append((path, before, after))
    return changes


def _resume_safe(path: tuple) -> bool:
    try:
        fld, _ = typed.lookup_field(ExperimentConfig, tuple(p for p in path if isinstance(p, str)))
    except KeyError:
        return False
    # A whole section (e.g. data.dev) set to or from null shows up as that section's path.
    return bool(fld.metadata.get("resume_safe"))


def _shown(run_dir: str) -> str:
    """`run_dir=PATH`, with the absolute path when PATH is relative."""
    absolute = os.path.abspath(run_dir)
    return f"run_dir={run_dir}" + ("" if absolute == run_dir else f" ({absolute})")


def is_run_dir(run_dir: str) -> bool:
    """Whether `run_dir` is a kerastx run: its `config.yaml` starts with `HEADER`, or
    `checkpoints/variables.json` exists."""
    try:
        with open(os.path.join(run_dir, CONFIG_FILE), encoding="utf-8") as f:
            if f.readline() == HEADER:
                return True
    except (OSError, UnicodeDecodeError):
        pass
    return os.path.isfile(os.path.join(run_dir, CHECKPOINT_DIR, VARIABLES_FILE))


def _foreign_entries(run_dir: str) -> list[str]:
    """The entries of an existing directory that are not kerastx's own (sorted)."""
    # The lock file, and the config's temporary file of a first start killed mid-write.
    entries = sorted(set(os.listdir(run_dir)) - {LOCK_FILE, CONFIG_FILE + ".tmp"})
    vocab = os.path.join(run_dir, VOCAB_DIR)
    # `kerastx vocab` ran first, or (multi-worker) another worker is building the
    # vocabularies while the chief checks: only kerastx's vocabulary files, whole or
    # being written (`<name>.tmp-<pid>`).
    if (
        entries == [VOCAB_DIR]
        and os.path.isdir(vocab)
        and all(_VOCAB_FILE.fullmatch(name) for name in os.listdir(vocab))
    ):
        return []
    return entries


_VOCAB_FILE = re.compile(
    r"(?:(?:source|target|shared)\.(?:txt|model)|labels\.txt|conditions\.txt|manifest\.json)"
    r"(?:\.tmp-\d+)?"
)


def check_run_dir(run_dir: str) -> None:
    """Refuses a run directory training must not write to; writes nothing.

    Accepted: a path that does not exist yet (its parent is created), an empty
    directory, or a kerastx run directory (`is_run_dir`), if writable.

    Raises:
        RunDirError: one line naming the directory: a file, a non-empty directory that
            is not a kerastx run, or a directory (or its nearest existing parent) this
            process cannot write to.
    """
    if not run_dir:
        raise RunDirError("run_dir is empty; set run_dir (or name) to where the run goes")
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"{_shown(run_dir)}: exists and is not a directory; choose another")
    if os.path.isdir(run_dir):
        try:
            foreign = _foreign_entries(run_dir)
        except OSError as err:
            raise RunDirError(f"{_shown(run_dir)}: cannot be read ({err.strerror})") from None
        if foreign and not is_run_dir(run_dir):
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunDirError(
                f"{_shown(run_dir)}: not a kerastx run directory: it is not empty "
                f"({len(foreign)} {'entry' if len(foreign) == 1 else 'entries'}: {listed}) "
                f"and has no {CONFIG_FILE} written by "
                f"kerastx; training would write its config, vocabularies, checkpoints and "
                f"logs into it: choose a new or empty directory, or an earlier run to resume"
            )
        target = run_dir
    else:
        target = os.path.dirname(os.path.abspath(run_dir))
        while not os.path.isdir(target):
            target = os.path.dirname(target)
    if not os.access(target, os.W_OK | os.X_OK):
        where = "" if target == run_dir else f" cannot be created: {target} is"
        raise RunDirError(
            f"{_shown(run_dir)}:{where} not writable (permission denied, read-only or "
            f"immutable); training writes its config, checkpoints and logs there: make it "
            f"writable or choose another run_dir"
        )


def make_run_dir(run_dir: str) -> None:
    """Creates the run directory (and its parents); one-line error when it cannot."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"{_shown(run_dir)}: cannot be created ({err.strerror}: {err.filename}); "
            f"choose another run_dir"
        ) from None


def has_checkpoint(run_dir: str) -> bool:
    """Whether the run directory holds any checkpoint (also `best/`, `averaged/`)."""
    directory = os.path.join(run_dir, CHECKPOINT_DIR)
    if os.path.isfile(os.path.join(directory, "checkpoint")):
        return True
    patterns = ("*.index", os.path.join(BEST_DIR, "*.index"), os.path.join(AVERAGED_DIR, "*.index"))
    return any(glob.glob(os.path.join(glob.escape(directory), p)) for p in patterns)


def write_resolved(cfg: ExperimentConfig, run_dir: str | None = None) -> str:
    """Writes `config.yaml` into the run directory, refusing an incompatible resume.

    A run directory that already holds a config and a checkpoint is a run being
    resumed: fields that change what is trained (model, data, optimizer, seed, ...)
    must be unchanged; fields marked resume-safe (train_steps, evaluation, decoding,
    distribution, ...) may change. Without a checkpoint (a run that failed before its
    first one) there is nothing to protect: a changed config replaces the old one, and
    one line says so.

    Args:
        cfg: the resolved experiment.
        run_dir: str or None. Defaults to `cfg.run_dir`.

    Returns:
        The path written.

    Raises:
        ConfigError: resuming with changed fields; the message names each of them.
        RunDirError: see `check_run_dir`; or the file cannot be written.
    """
    run_dir = run_dir or cfg.run_dir
    check_run_dir(run_dir)
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(path):
        old, _ = yamlio.load(path)
        changes = [
            c for c in config_changes(old or {}, typed.to_data(cfg)) if not _resume_safe(c[0])
        ]
        if changes and has_checkpoint(run_dir):
            listed = "; ".join(f"{typed.dotted(p)}: {a!r} -> {b!r}" for p, a, b in changes)
            raise ConfigError(
                f"{path}: cannot resume this run with a changed config ({listed}); "
                f"restore those values, or use a new run_dir"
            )
        if changes:
            log.info(
                "%s: the run has no checkpoint yet, so the changed config replaces the old "
                "one (changed: %s)",
                path,
                ", ".join(typed.dotted(p) for p, _, _ in changes),
            )
    make_run_dir(run_dir)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(resolved_yaml(cfg))
        os.replace(tmp, path)
    except OSError as err:
        raise RunDirError(
            f"{_shown(run_dir)}: cannot write {err.filename or path} ({err.strerror}); "
            f"make the directory writable or choose another run_dir"
        ) from None
    return path
