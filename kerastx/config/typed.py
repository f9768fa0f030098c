"""Typed config machinery: documented fields, strict conversion from YAML data, JSON Schema.

A config section is a dataclass whose fields are declared with `option(...)`, which
records a one-line doc, the unit, allowed choices and bounds. `from_data` turns the plain
data read from YAML (plus `--set` overrides) into section objects, collecting every
problem as a one-line message that names the file, line and key path.

Types understood: `int`, `float`, `str`, `bool`, `X | None`, `list[X]`, nested sections
and lists of sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from kerastx.config.errors import ConfigError
from kerastx.config.yamlio import Locations

MISSING = dataclasses.MISSING
# Integers are bounded to what every consumer (NumPy, TensorFlow int64) can hold.
INT_MAX = 2**63 - 1
INT_MIN = -(2**63)
# Strings YAML 1.1 reads as booleans; YAML 1.2 (our reader) keeps them as strings. Where
# a boolean is expected they mean what the user meant.
_TRUE_WORDS = {"yes", "y", "on", "true"}
_FALSE_WORDS = {"no", "n", "off", "false"}


def option(
    default: Any = MISSING,
    *,
    doc: str,
    unit: str | None = None,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    resume_safe: bool = False,
    default_factory: Any = MISSING,
) -> Any:
    """Declares a config field.

    Args:
        default: the default value; leave out for a required field.
        doc: str. One line saying what the field does.
        unit: str or None. The unit, e.g. "tokens per replica", "steps", "examples,
            global". Required for every int and float field.
        choices: tuple or None. The allowed values.
        ge, gt, le, lt: float or None. Bounds, inclusive (ge, le) or strict (gt, lt).
        resume_safe: bool. Whether the field may change when a run is resumed.
        default_factory: a callable making the default (for lists and sections).
    """
    meta = {
        "doc": doc,
        "unit": unit,
        "choices": choices,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "resume_safe": resume_safe,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def dotted(path: tuple) -> str:
    """`("data", "train", 0, "path")` -> `"data.train[0].path"`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def where(path: tuple, locs: Locations) -> str:
    """`file:line: key.path` for messages; falls back to the nearest located parent."""
    for n in range(len(path), -1, -1):
        if path[:n] in locs:
            filename, line = locs[path[:n]]
            prefix = f"{filename}:{line}" if line else filename
            return f"{prefix}: {dotted(path)}" if path else prefix
    return dotted(path) or "<config>"


def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A short readable name for a field type, used in messages and --explain."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        name = f"list of {type_name(typing.get_args(inner)[0])}"
    elif dataclasses.is_dataclass(inner):
        name = "section"
    else:
        name = {int: "integer", float: "number", str: "string", bool: "boolean"}[inner]
    return f"{name} or null" if optional else name


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return repr(value)


class InvalidValueUsed(Exception):
    """Raised when a rule reads a field that failed typing (see `Invalid`)."""


class Invalid:
    """Stands in a section for a value that failed typing (already reported).

    `build` returns a config whose failed fields hold an `Invalid`, so the cross-field
    rules can still run on the valid ones. Using it in any way (comparing, arithmetic,
    truth, iteration, attributes, formatting) raises `InvalidValueUsed`, which skips the
    rule that read it: a rule never reports on a value the user already has to fix.

    Args:
        path: tuple. The key path of the failed value.
    """

    __slots__ = ("path",)

    def __init__(self, path: tuple):
        object.__setattr__(self, "path", path)

    def _used(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidValueUsed(self.path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise InvalidValueUsed(self.path)

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _used
    __len__ = __iter__ = __contains__ = __getitem__ = _used
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _used
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _used
    __neg__ = __abs__ = __int__ = __float__ = __index__ = _used
    __str__ = __repr__ = __format__ = _used  # a message never shows a failed value


class _Collector:
    """Gathers problems while converting, so the user sees all of them at once."""

    def __init__(self, locs: Locations):
        self.locs = locs
        self.errors: list[str] = []

    def add(self, path: tuple, message: str) -> None:
        self.errors.append(f"{where(path, self.locs)}: {message}")


def _check_bounds(value: Any, meta: dict, path: tuple, out: _Collector) -> bool:
    """Whether `value` is within the field's choices and bounds; reports it if not."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(str(c) for c in choices)
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        out.add(path, f"must be one of: {listed}; got {value!r}{suggestion}")
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            out.add(path, f"must be a finite number; got {value!r}")
            return False
        for key, ok, sign in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            bound = meta.get(key)
            if bound is not None and not ok(value, bound):
                out.add(path, f"must be {sign} {bound}; got {value!r}")
                return False
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            sign, bound = ("<=", INT_MAX) if value > 0 else (">=", INT_MIN)
            out.add(path, f"must be {sign} {bound} (a 64-bit integer); got {value}")
            return False
    return True


def _convert(value: Any, tp: Any, meta: dict, path: tuple, out: _Collector) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        out.add(path, f"expected {type_name(tp)}, got null")
        return MISSING
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, list):
            out.add(path, f"expected {type_name(inner)}, got {_describe(value)}")
            return MISSING
        item_tp = typing.get_args(inner)[0]
        items = [_convert(v, item_tp, meta, path + (i,), out) for i, v in enumerate(value)]
        return [Invalid(path + (i,)) if v is MISSING else v for i, v in enumerate(items)]
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            out.add(path, f"expected a mapping of {inner.__name__} keys, got {_describe(value)}")
            return MISSING
        return _build(inner, value, path, out)
    if inner is bool:
        if isinstance(value, bool):
            result = value
        elif isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
            result = value.lower() in _TRUE_WORDS
        else:
            out.add(path, f"expected a boolean (true or false), got {_describe(value)}")
            return MISSING
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.add(path, f"expected an integer, got {_describe(value)}")
            return MISSING
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                out.add(path, f"expected an integer, got {value!r}")
                return MISSING
            value = int(value)
        result = value
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (remove the quotes to give a number)"
                except ValueError:
                    pass
            out.add(path, f"expected a number, got {_describe(value)}{hint}")
            return MISSING
        result = float(value)
    elif inner is str:
        if isinstance(value, (dict, list)):
            out.add(path, f"expected a string, got {_describe(value)}")
            return MISSING
        # A number or boolean where text is expected (e.g. a language code `no`, a
        # version `2.0`) is what the user typed; keep its YAML spelling.
        result = str(value).lower() if isinstance(value, bool) else str(value)
    else:  # pragma: no cover - a section declared a type this module does not know
        raise TypeError(f"unsupported config type {tp!r} at {dotted(path)}")
    return result if _check_bounds(result, meta, path, out) else MISSING


def _build(cls: type, data: dict, path: tuple, out: _Collector) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = type_hints(cls)
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            section = f" in {dotted(path)}" if path else ""
            out.add(path + (key,), f"unknown key{section}{suggestion}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            value = _convert(data[name], hints[name], field.metadata, path + (name,), out)
            kwargs[name] = Invalid(path + (name,)) if value is MISSING else value
        elif field.default is MISSING and field.default_factory is MISSING:
            out.add(path + (name,), f"missing required key ({field.metadata['doc']})")
            kwargs[name] = Invalid(path + (name,))
    return cls(**kwargs)


def build(cls: type, data: Any, locs: Locations) -> tuple[Any, list[str]]:
    """Builds the section `cls` from plain YAML data, collecting every problem.

    Args:
        cls: a config dataclass.
        data: dict. Plain data (from `yamlio` and overrides).
        locs: key path -> (file, line), for messages.

    Returns:
        `(section, errors)`: every value that failed is an `Invalid` in the section;
        `errors` holds one line per problem (empty when the section is valid).

    Raises:
        ConfigError: `data` is not a mapping.
    """
    out = _Collector(locs)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where((), locs)}: an experiment must be a mapping of sections")
    return _build(cls, data, (), out), out.errors


def from_data(cls: type, data: Any, locs: Locations) -> Any:
    """Builds the section `cls` from plain YAML data, strictly.

    Args:
        cls: a config dataclass.
        data: dict. Plain data (from `yamlio` and overrides).
        locs: key path -> (file, line), for messages.

    Returns:
        An instance of `cls`.

    Raises:
        ConfigError: every problem found, one line each.
    """
    result, errors = build(cls, data, locs)
    if errors:
        raise ConfigError(errors)
    return result


def walk(cls: type, prefix: tuple = ()):
    """Yields `(path, field, type)` for every leaf field of a section, depth first."""
    hints = type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from walk(inner, prefix + (field.name,))
        else:
            yield prefix + (field.name,), field, tp


def lookup_field(cls: type, path: tuple[str, ...]) -> tuple[Any, Any]:
    """Returns `(field, type)` of the field at a dotted path, or raises KeyError.

    The KeyError's argument is the path prefix that does not exist, and a suggestion.
    """
    current = cls
    for i, name in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(current)}
        if name not in fields:
            hint = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
            raise KeyError(path[: i + 1], hint[0] if hint else None)
        field = fields[name]
        tp = type_hints(current)[name]
        inner, _ = _unwrap_optional(tp)
        if i == len(path) - 1:
            return field, tp
        if typing.get_origin(inner) is list:  # a list of sections: descend into the item
            inner = typing.get_args(inner)[0]
        if not dataclasses.is_dataclass(inner):
            raise KeyError(path[: i + 2], None)
        current = inner
    raise KeyError(path, None)


def to_data(obj: Any) -> Any:
    """A section as plain data (dicts, lists, scalars), in field order."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_data(v) for v in obj]
    return obj


def flatten(data: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Plain nested data -> {path: leaf}; lists (and the data.dev/test corpora) are leaves."""
    if isinstance(data, dict) and prefix not in (("data", "dev"), ("data", "test")):
        out: dict[tuple, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, prefix + (key,)))
        return out
    return {prefix: data}


# ---------------------------------------------------------------------------------------
# JSON Schema


def _schema_for(tp: Any, meta: dict) -> dict:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is list:
        schema = {"type": "array", "items": _schema_for(typing.get_args(inner)[0], {})}
    elif dataclasses.is_dataclass(inner):
        schema = section_schema(inner)
    else:
        schema = {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[inner]}
        if meta.get("choices") is not None:
            schema["enum"] = list(meta["choices"])
        for key, name in (
            ("ge", "minimum"),
            ("le", "maximum"),
            ("gt", "exclusiveMinimum"),
            ("lt", "exclusiveMaximum"),
        ):
            if meta.get(key) is not None:
                schema[name] = meta[key]
    if optional:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def section_schema(cls: type) -> dict:
    """JSON Schema (draft 2020-12) of a config section, with docs and units."""
    hints = type_hints(cls)
    props, required = {}, []
    for field in dataclasses.fields(cls):
        schema = _schema_for(hints[field.name], field.metadata)
        doc = field.metadata.get("doc", "")
        unit = field.metadata.get("unit")
        schema["description"] = f"{doc} [{unit}]" if unit else doc
        if field.default is not MISSING:
            schema["default"] = field.default
        elif field.default_factory is not MISSING:
            schema["default"] = to_data(field.default_factory())
        else:
            required.append(field.name)
        props[field.name] = schema
    schema = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "properties": props,
        "additionalProperties": False,
    }
    # Required keys are not listed: a file may get them from its `base:` files, so only
    # `kerastx validate` (which merges) can tell whether one is missing.
    del required
    return schema
