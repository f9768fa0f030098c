"""Library functions behind `kerastx validate` and `kerastx schema`."""

from __future__ import annotations

import json
import logging

from kerastx import sizing, tasks
from kerastx.config import yamlio
from kerastx.config.explain import explain, json_schema
from kerastx.config.loader import diff_from_defaults, load_experiment
from kerastx.config.rundir import resolved_yaml

VALIDATE_MODES = ("resolved", "diff", "explain")

log = logging.getLogger("kerastx")


def validate(paths: list[str], overrides: list[str] | None = None, mode: str = "resolved") -> str:
    """Loads and checks an experiment; returns the text `kerastx validate` prints.

    Args:
        paths: list of str. Experiment files, merged left to right.
        overrides: list of str or None. `key=value` overrides.
        mode: str. "resolved" (the full config as YAML), "diff" (only what differs from
            the defaults) or "explain" (every key with its type, unit, value and doc).

    A model whose weights and optimizer state alone exceed this machine's memory is
    valid, with a warning logged (stderr on the command line): see `memory_warning`.

    Raises:
        ConfigError: the experiment is invalid.
    """
    if mode not in VALIDATE_MODES:
        raise ValueError(f"mode must be one of {VALIDATE_MODES}. Received: mode={mode!r}")
    cfg, prov = load_experiment(paths, overrides)
    warning = memory_warning(cfg)
    if warning:
        log.warning("%s", warning)
    if mode == "explain":
        return explain(cfg)
    if mode == "diff":
        return yamlio.dumps(diff_from_defaults(cfg)).rstrip("\n")
    files = " <- ".join(prov.files + [f"--set {o}" for o in prov.overrides])
    return f"# kerastx: valid ({files})\n" + resolved_yaml(cfg).rstrip("\n")


def memory_warning(cfg) -> str | None:
    """The line `validate` warns with when the model cannot fit this machine, or None.

    The family's closed-form parameter count (`Task.parameter_count`) with the
    configured vocabulary sizes (`sizing.configured_sizes`), no TensorFlow.
    """
    task = tasks.get(cfg.model.type)
    sizes = sizing.configured_sizes(cfg, task.target_vocabulary, "label" in task.fields)
    count = task.parameter_count(cfg.model, sizes)
    if count is None:
        return None
    return sizing.memory_warning(cfg, count, sizes, sizing.layer_keys(task.model_keys))


def schema() -> str:
    """The JSON Schema of the experiment format, as indented JSON text."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


__all__ = ["memory_warning", "schema", "validate"]
