"""Loading an experiment: files merged left to right, `base:` chains, `--set` overrides.

Precedence, lowest first: the defaults in `sections.py` <- each YAML file in the order
given (a file's `base:` files come before the file itself) <- `--set key=value`.
Mappings merge key by key; lists and scalars are replaced as a whole.

After typing, the length caps left at their default follow a smaller `model.max_length`
(`validation.follow_model`); then every typing error and broken rule is reported at once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from kerastx.config import typed, yamlio
from kerastx.config.errors import ConfigError
from kerastx.config.sections import CorpusConfig, ExperimentConfig
from kerastx.config.validation import follow_model, validate

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass
class Provenance:
    """Where each value of a loaded experiment came from.

    Attributes:
        locations: key path -> (file, line) for every value the user set.
        files: the YAML files read, in merge order (bases first).
        overrides: the `--set` strings applied.
    """

    locations: yamlio.Locations = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def explicit(self, path: tuple) -> bool:
        """Whether the user set the value at `path` (or something inside it)."""
        return any(p[: len(path)] == path for p in self.locations)


def _merge(
    dst: dict, src: dict, src_locs: yamlio.Locations, locs: yamlio.Locations, prefix: tuple = ()
) -> None:
    for key, value in src.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            locs[path] = src_locs.get(path, locs.get(path))
            _merge(dst[key], value, src_locs, locs, path)
            continue
        for p in [p for p in locs if p[: len(path)] == path]:
            del locs[p]
        dst[key] = copy.deepcopy(value)
        locs.update({p: v for p, v in src_locs.items() if p[: len(path)] == path})


def _read_with_bases(path: str, prov: Provenance, chain: tuple[str, ...]) -> tuple[dict, dict]:
    """Reads `path` and, first, the files its `base:` names; `chain` = the files on the way."""
    chain = (*chain, path)
    data, locs = yamlio.load(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: an experiment must be a mapping of sections")
    bases = data.pop("base", None)
    base_line = locs.pop(("base",), (path, 0))[1]
    locs = {p: v for p, v in locs.items() if p[:1] != ("base",)}
    merged: dict = {}
    merged_locs: yamlio.Locations = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}:{base_line}: base must be a file name or a list of them")
        for base in bases:
            base_path = os.path.join(os.path.dirname(path), base)
            if not os.path.exists(base_path):
                raise ConfigError(f"{path}:{base_line}: base file not found: {base_path}")
            if any(os.path.samefile(base_path, seen) for seen in chain):
                cycle = " -> ".join([*chain, base_path])
                raise ConfigError(f"{path}:{base_line}: `base:` chain loops back ({cycle})")
            base_data, base_locs = _read_with_bases(base_path, prov, chain)
            _merge(merged, base_data, base_locs, merged_locs)
    prov.files.append(path)
    _merge(merged, data, locs, merged_locs)
    return merged, merged_locs


def parse_key(key: str) -> tuple:
    """`"data.train[0].path"` -> `("data", "train", 0, "path")`."""
    parts: list = []
    pos = 0
    for m in _SEGMENT.finditer(key):
        if m.start() != pos and key[pos : m.start()] != ".":
            raise ValueError(key)
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(key) or not parts or not isinstance(parts[0], str):
        raise ValueError(key)
    return tuple(parts)


def _apply_override(data: dict, locs: yamlio.Locations, text: str) -> None:
    where = f"--set {text}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected key=value, e.g. model.num_heads=4")
    key, raw = text.split("=", 1)
    try:
        path = parse_key(key.strip())
    except ValueError:
        raise ConfigError(f"{where}: {key!r} is not a key path like model.num_heads") from None
    field_path = tuple(p for p in path if isinstance(p, str))
    try:
        _, tp = typed.lookup_field(ExperimentConfig, field_path)
    except KeyError as err:
        missing, hint = err.args
        suggestion = f" (did you mean '{hint}'?)" if hint else ""
        raise ConfigError(f"{where}: unknown key '{typed.dotted(missing)}'{suggestion}") from None
    inner, _ = typed._unwrap_optional(tp)
    if inner is str:
        value: Any = raw  # text is taken as written: `--set name=no` stays "no"
        if raw in ("null", "~"):
            value = None
    else:
        value, _ = yamlio.loads(raw, where)
    # Walk to the parent of the value: a list item must exist; a mapping on the way that
    # is missing (or is a scalar) becomes an empty one, located at this --set.
    node: Any = data  # a dict where the next part is a name, a list where it is an index
    for i, part in enumerate(path[:-1]):
        here = path[: i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"{where}: {typed.dotted(here)} does not exist")
            child = node[part]
        else:
            child = node.get(part)
        if isinstance(path[i + 1], int):
            if not isinstance(child, list):
                raise ConfigError(f"{where}: {typed.dotted(here)} has no items")
        elif not isinstance(child, dict):
            child = node[part] = {}
            for p in [p for p in locs if p[: len(here)] == here]:
                del locs[p]
            locs[here] = (where, 0)
        node = child
    last = path[-1]
    if isinstance(last, int) and (not isinstance(node, list) or last >= len(node)):
        raise ConfigError(f"{where}: {typed.dotted(path)} does not exist")
    node[last] = value
    for p in [p for p in locs if p[: len(path)] == path]:
        del locs[p]
    locs[path] = (where, 0)


def load_experiment(
    paths: list[str] | str, overrides: list[str] | None = None
) -> tuple[ExperimentConfig, Provenance]:
    """Loads, merges, overrides and validates an experiment.

    Args:
        paths: str or list of str. YAML files, merged left to right.
        overrides: list of str or None. `key.path=value` strings; values are parsed with
            the field's type (`--set training.learning_rate=1e-4`).

    Returns:
        `(config, provenance)`. `config.name` and `config.run_dir` are filled in.

    Raises:
        ConfigError: every problem found, one line each, naming file, line and key.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ConfigError("no experiment file given")
    prov = Provenance(overrides=list(overrides or []))
    data: dict = {}
    for path in paths:
        file_data, file_locs = _read_with_bases(path, prov, ())
        _merge(data, file_data, file_locs, prov.locations)
    # Problems with no better place (a missing top-level section) name the last file.
    prov.locations[()] = (paths[-1], 0)
    for text in prov.overrides:
        _apply_override(data, prov.locations, text)
    # Typing errors and broken cross-field rules are reported together: the rules run on
    # the fields that typed (a failed one is a `typed.Invalid`; rules reading it skip).
    cfg, errors = typed.build(ExperimentConfig, data, prov.locations)
    with contextlib.suppress(typed.InvalidValueUsed):
        if not cfg.name:
            cfg.name = os.path.splitext(os.path.basename(paths[-1]))[0]
        if not _NAME.match(cfg.name):
            errors.append(
                f"{typed.where(('name',), prov.locations)}: use letters, digits, '_', '-', "
                f"'.' only; got {cfg.name!r}"
            )
        if not cfg.run_dir:
            cfg.run_dir = os.path.join("runs", cfg.name)
    follow_model(cfg, prov)
    validate(cfg, prov, errors)
    return cfg, prov


def defaults_data() -> dict:
    """The default value of every leaf field, as nested plain data (required ones absent)."""
    out: dict = {}
    for path, fld, _ in typed.walk(ExperimentConfig):
        if fld.default is not typed.MISSING:
            value = fld.default
        elif fld.default_factory is not typed.MISSING:
            value = typed.to_data(fld.default_factory())
        else:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def diff_from_defaults(cfg: ExperimentConfig) -> dict:
    """The resolved values that differ from the defaults, as nested plain data."""
    defaults = typed.flatten(defaults_data())
    corpus_defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(CorpusConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    out: dict = {}
    for path, value in typed.flatten(typed.to_data(cfg)).items():
        if path in defaults and defaults[path] == value:
            continue
        if path[:2] in (("data", "train"), ("data", "dev"), ("data", "test")):
            # Corpora: keep each one's type and what differs from the corpus defaults.
            if value is None:
                continue
            items = value if isinstance(value, list) else [value]
            items = [
                {
                    k: v
                    for k, v in item.items()
                    if k == "type" or corpus_defaults.get(k, object()) != v
                }
                for item in items
            ]
            value = items if isinstance(value, list) else items[0]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out
