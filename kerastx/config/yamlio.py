"""A strict YAML reader for experiment files.

PyYAML's `safe_load` follows YAML 1.1, which has traps for configuration files:
`1e-4` is read as a string, `no`/`off`/`y` as booleans, `010` as octal 8, `1:30` as the
sexagesimal 90, and a key written twice keeps its last value silently. This reader
composes the YAML node graph with PyYAML and converts it itself:

- plain scalars are resolved with the YAML 1.2 core schema (`1e-4` is a float; `no`,
  `on`, `y` stay strings; the typed config turns them into booleans where a boolean is
  expected, see `kerastx.config.typed`);
- a duplicate key is an error naming both lines;
- any explicit tag other than the standard `!!str`, `!!int`, `!!float`, `!!bool`,
  `!!null`, `!!seq`, `!!map` is refused (no `!!python/object`: a config is data);
- every value's line is recorded, so later errors can name `file:line`;
- a document is bounded before it is converted: at most `MAX_BYTES` of text, `MAX_DEPTH`
  levels of nesting, and `MAX_VALUES` values once aliases are expanded (an alias bomb of
  a few lines would otherwise expand to billions of values).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from kerastx.config.errors import ConfigError

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"

_INT_DEC = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT_NUM = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_FLOAT_INF = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
_FLOAT_NAN = re.compile(r"^\.(nan|NaN|NAN)$")

# Bounds of one document. An experiment holds a few hundred values, a few levels deep.
MAX_BYTES = 2**20
MAX_DEPTH = 64
MAX_VALUES = 100_000
# Longest integer written out (Python refuses to convert over 4300 digits).
MAX_DIGITS = 100


class _Core12Loader(yaml.SafeLoader):
    """SafeLoader whose implicit scalar resolution is the YAML 1.2 core schema."""

    yaml_implicit_resolvers: dict = {}


for _tag, _regexp, _first in (
    (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
    (_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    (_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), "-+0123456789"),
    (
        _FLOAT,
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        "-+.0123456789",
    ),
    (_MERGE, re.compile(r"^(?:<<)$"), "<"),
):
    _Core12Loader.add_implicit_resolver(_tag, _regexp, list(_first))

# (file, line) of a value; line is 1-based.
Location = tuple[str, int]
# Key path -> location of the value at that path. Path items are str (mapping keys) or
# int (sequence indexes).
Locations = dict[tuple, Location]


def _scalar(node: yaml.ScalarNode, where: str) -> Any:
    value, tag = node.value, node.tag
    if tag == _STR:
        return value
    if tag == _NULL:
        if value not in ("", "~", "null", "Null", "NULL"):
            raise ConfigError(f"{where}: {value!r} is not a null value")
        return None
    if tag == _BOOL:
        low = value.lower()
        if low not in ("true", "false"):
            raise ConfigError(f"{where}: {value!r} is not a boolean (write true or false)")
        return low == "true"
    if tag == _INT:
        if len(value) > MAX_DIGITS:
            raise ConfigError(
                f"{where}: an integer of {len(value)} characters is too long (at most "
                f"{MAX_DIGITS}; quote it if it is text)"
            )
        if _INT_DEC.match(value):
            return int(value, 10)
        if _INT_OCT.match(value):
            return int(value[2:], 8)
        if _INT_HEX.match(value):
            return int(value[2:], 16)
        raise ConfigError(f"{where}: {value!r} is not an integer")
    if tag == _FLOAT:
        if _FLOAT_NUM.match(value) or _INT_DEC.match(value):
            return float(value)
        if _FLOAT_INF.match(value):
            return -math.inf if value.startswith("-") else math.inf
        if _FLOAT_NAN.match(value):
            return math.nan
        raise ConfigError(f"{where}: {value!r} is not a number")
    if tag == _MERGE:
        raise ConfigError(f"{where}: YAML merge keys (<<) are not supported; use `base:`")
    raise ConfigError(
        f"{where}: YAML tag {tag!r} is not allowed; experiment files hold plain data only"
    )


def _convert(node: yaml.Node, filename: str, path: tuple, locs: Locations, stack: set) -> Any:
    line = node.start_mark.line + 1
    where = f"{filename}:{line}"
    locs[path] = (filename, line)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, where)
    if id(node) in stack:
        raise ConfigError(f"{where}: recursive YAML alias")
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise ConfigError(f"{where}: YAML tag {node.tag!r} is not allowed")
        stack.add(id(node))
        out = [_convert(n, filename, path + (i,), locs, stack) for i, n in enumerate(node.value)]
        stack.discard(id(node))
        return out
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            raise ConfigError(f"{where}: YAML tag {node.tag!r} is not allowed")
        stack.add(id(node))
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                if isinstance(key_node, yaml.ScalarNode):
                    _scalar(key_node, f"{filename}:{key_line}")  # raises the merge-key error
                raise ConfigError(f"{filename}:{key_line}: mapping keys must be plain names")
            key = key_node.value
            dotted = ".".join(str(p) for p in path + (key,))
            if key in out:
                raise ConfigError(
                    f"{filename}:{key_line}: duplicate key '{dotted}' "
                    f"(first set on line {first_line[key]})"
                )
            first_line[key] = key_line
            out[key] = _convert(value_node, filename, path + (key,), locs, stack)
            locs[path + (key,)] = (filename, key_line)
        stack.discard(id(node))
        return out
    raise ConfigError(f"{where}: unsupported YAML node")  # pragma: no cover


def _check_events(text: str, filename: str) -> None:
    """Refuses nesting deeper than MAX_DEPTH and more than MAX_VALUES values written out,
    from the parser's events: parsing, unlike composing, does not recurse, so the
    composer never recurses that deep, and a huge document stops before it is composed."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_Core12Loader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            values += 1
            if values > MAX_VALUES:
                raise ConfigError(
                    f"{filename}:{event.start_mark.line + 1}: more than {MAX_VALUES} values "
                    f"in one file; an experiment holds a few hundred"
                )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise ConfigError(
                    f"{filename}:{line}: YAML nested more than {MAX_DEPTH} levels deep; "
                    f"an experiment is a few levels of sections"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """id(node) -> how many values the node is once every alias is expanded.

    Each distinct node is visited once (aliases share nodes), so this is linear in the
    size of the text even when the expansion is exponential. A node inside itself (a
    recursive alias) counts 1 there; converting reports it.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            return 1
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            return 1
        on_path.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = list(node.value)
        total = 1 + sum(size(n) for n in children)
        on_path.discard(key)
        sizes[key] = total
        return total

    size(root)
    return sizes


def _check_size(root: yaml.Node, filename: str) -> None:
    """Refuses a document holding more than MAX_VALUES values once aliases are expanded;
    names the top-level entry that expands most. (Without aliases, `_check_events`
    already refused it.)"""
    sizes = _expanded_sizes(root)
    total = sizes.get(id(root), 1)
    if total <= MAX_VALUES:
        return
    if isinstance(root, yaml.MappingNode):
        entries = [(k.value, k, v) for k, v in root.value]
    else:
        entries = [(f"[{i}]", v, v) for i, v in enumerate(root.value)]
    name, at, node = max(entries, key=lambda e: sizes.get(id(e[2]), 1))
    count = sizes.get(id(node), 1)
    raise ConfigError(
        f"{filename}:{at.start_mark.line + 1}: {name}: YAML aliases expand this value to "
        f"{count} values, over the limit of {MAX_VALUES} in one file"
    )


def loads(text: str, filename: str = "<string>") -> tuple[Any, Locations]:
    """Parses YAML text into plain Python data and the line of every value.

    Args:
        text: str. The YAML document (a single document).
        filename: str. Name used in error messages and locations.

    Returns:
        `(data, locations)`: `data` is built from dict, list, str, int, float, bool and
        None; `locations` maps each key path (a tuple) to `(filename, line)`.

    Raises:
        ConfigError: one line naming the file and line; also for a document over the
            bounds (MAX_BYTES, MAX_DEPTH, MAX_VALUES).
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(
            f"{filename}: more than {MAX_BYTES} characters; an experiment file holds a few "
            f"kilobytes"
        )
    try:
        _check_events(text, filename)
        nodes = list(yaml.compose_all(text, Loader=_Core12Loader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = err.problem or err.context or "invalid YAML"
        if err.context and "duplicate anchor" in err.context and err.context_mark:
            # PyYAML: context "found duplicate anchor 'x'; first occurrence".
            anchor = err.context.split(";")[0].removeprefix("found duplicate anchor ")
            problem = f"anchor {anchor} defined twice (first on line {err.context_mark.line + 1})"
        raise ConfigError(f"{filename}{line}: YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        line = text.count("\n", 0, err.position) + 1
        raise ConfigError(
            f"{filename}:{line}: YAML does not allow the character U+{err.character:04X} "
            f"(a control character); remove it or write it as an escape in double quotes"
        ) from None
    except yaml.YAMLError as err:  # pragma: no cover - no other kind is known
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{filename}: YAML error: {first}") from None
    if len(nodes) > 1:
        line = nodes[1].start_mark.line + 1
        raise ConfigError(f"{filename}:{line}: expected one YAML document, found several")
    locs: Locations = {}
    if not nodes or nodes[0] is None:
        return None, locs
    _check_size(nodes[0], filename)
    return _convert(nodes[0], filename, (), locs, set()), locs


def load(path: str) -> tuple[Any, Locations]:
    """Reads a YAML file with `loads`; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)  # `loads` refuses a longer text
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    return loads(text, path)


def dumps(data: Any) -> str:
    """Writes plain data as block-style YAML that `loads` reads back to equal data."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
