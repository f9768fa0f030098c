"""Library functions behind `kerastx validate` and `kerastx schema`."""

from __future__ import annotations

import json

from kerastx.config import yamlio
from kerastx.config.explain import explain, json_schema
from kerastx.config.loader import diff_from_defaults, load_experiment
from kerastx.config.rundir import resolved_yaml

VALIDATE_MODES = ("resolved", "diff", "explain")


def validate(paths: list[str], overrides: list[str] | None = None, mode: str = "resolved") -> str:
    """Loads and checks an experiment; returns the text `kerastx validate` prints.

    Args:
        paths: list of str. Experiment files, merged left to right.
        overrides: list of str or None. `key=value` overrides.
        mode: str. "resolved" (the full config as YAML), "diff" (only what differs from
            the defaults) or "explain" (every key with its type, unit, value and doc).

    Raises:
        ConfigError: the experiment is invalid.
    """
    if mode not in VALIDATE_MODES:
        raise ValueError(f"mode must be one of {VALIDATE_MODES}. Received: mode={mode!r}")
    cfg, prov = load_experiment(paths, overrides)
    if mode == "explain":
        return explain(cfg)
    if mode == "diff":
        return yamlio.dumps(diff_from_defaults(cfg)).rstrip("\n")
    files = " <- ".join(prov.files + [f"--set {o}" for o in prov.overrides])
    return f"# kerastx: valid ({files})\n" + resolved_yaml(cfg).rstrip("\n")


def schema() -> str:
    """The JSON Schema of the experiment format, as indented JSON text."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


__all__ = ["schema", "validate"]
