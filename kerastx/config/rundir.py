"""The resolved config in the run directory, and the resume check against it."""

from __future__ import annotations

import os

from kerastx.config import typed, yamlio
from kerastx.config.errors import ConfigError
from kerastx.config.sections import ExperimentConfig

CONFIG_FILE = "config.yaml"


def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The full resolved config as YAML: every field, defaults included."""
    header = "# Resolved kerastx experiment: every field, defaults included.\n"
    return header + yamlio.dumps(typed.to_data(cfg))


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


def write_resolved(cfg: ExperimentConfig, run_dir: str | None = None) -> str:
    """Writes `config.yaml` into the run directory, refusing an incompatible resume.

    A run directory that already holds a config is a run being resumed: fields that
    change what is trained (model, data, optimizer, seed, ...) must be unchanged; fields
    marked resume-safe (train_steps, evaluation, decoding, distribution, ...) may change.

    Args:
        cfg: the resolved experiment.
        run_dir: str or None. Defaults to `cfg.run_dir`.

    Returns:
        The path written.

    Raises:
        ConfigError: resuming with changed fields; the message names each of them.
    """
    run_dir = run_dir or cfg.run_dir
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(path):
        old, _ = yamlio.load(path)
        changes = [
            c for c in config_changes(old or {}, typed.to_data(cfg)) if not _resume_safe(c[0])
        ]
        if changes:
            listed = "; ".join(f"{typed.dotted(p)}: {a!r} -> {b!r}" for p, a, b in changes)
            raise ConfigError(
                f"{path}: cannot resume this run with a changed config ({listed}); "
                f"restore those values, or use a new run_dir"
            )
    os.makedirs(run_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(resolved_yaml(cfg))
    os.replace(tmp, path)
    return path
