"""Human and machine descriptions of the experiment format: --explain and JSON Schema."""

from __future__ import annotations

import dataclasses

from kerastx.config import typed
from kerastx.config.sections import CorpusConfig, ExperimentConfig


def json_schema() -> dict:
    """The experiment format as a JSON Schema (draft 2020-12) for editors."""
    schema = typed.section_schema(ExperimentConfig)
    schema["properties"]["base"] = {
        "description": "YAML file(s) this experiment extends, relative to this file",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kerastx.dev/schema/experiment.json",
        "title": "kerastx experiment",
        **schema,
    }


def _default_text(fld: dataclasses.Field) -> str:
    if fld.default is not dataclasses.MISSING:
        value = fld.default
    elif fld.default_factory is not dataclasses.MISSING:
        value = typed.to_data(fld.default_factory())
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def explain(cfg: ExperimentConfig | None = None) -> str:
    """A table of every key: dotted path, type, unit, default (and value), doc.

    Args:
        cfg: the resolved experiment, or None to list defaults only.
    """
    rows = []
    values = typed.flatten(typed.to_data(cfg)) if cfg is not None else {}
    for path, fld, tp in typed.walk(ExperimentConfig):
        rows.append(_row(path, fld, tp, values))
        if path == ("data", "train"):
            for sub_path, sub_fld, sub_tp in typed.walk(CorpusConfig, ("data", "train[]")):
                rows.append(_row(sub_path, sub_fld, sub_tp, {}))
    width = max(len(r[0]) for r in rows)
    lines = []
    for key, type_text, unit, value, doc in rows:
        unit_text = f" [{unit}]" if unit else ""
        lines.append(f"{key.ljust(width)}  {value}  ({type_text}{unit_text}) {doc}")
    return "\n".join(lines)


def _row(path, fld, tp, values):
    key = ".".join(path)
    default = _default_text(fld)
    value = f"= {default}"
    if path in values and not dataclasses.is_dataclass(values[path]):
        current = values[path]
        shown = (
            "null"
            if current is None
            else (
                str(current).lower()
                if isinstance(current, bool)
                else repr(current)
                if isinstance(current, str)
                else str(current)
            )
        )
        if shown != default and not isinstance(current, list | dict):
            value = f"= {shown} (default {default})"
    meta = fld.metadata
    doc = meta.get("doc", "")
    if meta.get("choices"):
        doc += f"; one of: {', '.join(str(c) for c in meta['choices'])}"
    return key, typed.type_name(tp), meta.get("unit"), value, doc
