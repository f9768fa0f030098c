"""Property: any YAML document and any `--set` strings give exit 0 or one-line errors.

Random documents are built from the real schema's keys (so they reach deep into the
typed layer and the cross-field rules) mixed with unknown keys, wrong types, tricky
scalars (YAML 1.1 words, infinities, huge integers), tags, anchors and aliases, and
random text. `kerastx validate` must never raise: it exits 0, or exits 2 with every
stderr line `kerastx validate: error: <one problem>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerastx.cli import main
from kerastx.config import ExperimentConfig, typed

EXAMPLES = 300
PREFIX = "kerastx validate: error: "


def _schema_tree(cls) -> dict:
    """Section -> {key: subtree (a section), or (type, metadata) of a leaf}."""
    out: dict = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner, _ = typed._unwrap_optional(hints[f.name])
        item = typing.get_args(inner)[0] if typing.get_origin(inner) is list else None
        if dataclasses.is_dataclass(inner):
            out[f.name] = _schema_tree(inner)
        elif item is not None and dataclasses.is_dataclass(item):
            out[f.name] = ("sections", _schema_tree(item))
        else:
            out[f.name] = (inner if item is None else ("list", item), f.metadata)
    return out


SCHEMA = _schema_tree(ExperimentConfig)
LEAF_PATHS = [typed.dotted(path) for path, _, _ in typed.walk(ExperimentConfig)]
# Scalars that have tripped config readers: YAML 1.1 words, number forms, specials.
TRICKY = [
    "1e999",
    "-1e999",
    ".inf",
    "-.inf",
    ".nan",
    ".NaN",
    "-0.0",
    "0x1F",
    "0o17",
    "010",
    "1_000",
    "1:30",
    "9" * 30,
    "9" * 120,
    "-9223372036854775809",
    "4294967296",
    "yes",
    "no",
    "on",
    "y",
    "null",
    "~",
    "''",
    '""',
    "'1e-4'",
    "!!str 5",
    "!!int 5",
    "!!int x",
    "!!float abc",
    "!!bool yes",
    "!!null x",
    "!!binary aGk=",
    "!!timestamp 2001-12-14",
    "!!python/object:os.system",
    "!custom 1",
    "<<",
    "*nowhere",
    "[]",
    "{}",
    "[1, 2]",
    "[0, 0]",
    "'\\t'",
    '"\\x00"',
    "'a: b'",
    "?",
    "- x",
    "%",
    "#",
    "@x",
    "`x",
]
WORDS = [
    "synthetic",
    "parallel",
    "tsv",
    "text",
    "seq2seq",
    "decoder_lm",
    "encoder_classifier",
    "beam",
    "sample",
    "adamw",
    "bleu",
    "wer",
    "loss",
    "rope",
    "all",
    "a.txt",
    "runs/x",
]
ANCHORS = ["a1", "a2"]
tricky = st.sampled_from(TRICKY)
other_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.[]0<>:-", min_size=1, max_size=12)


def _scalar(tp, meta: dict, dirty: bool = True) -> st.SearchStrategy:
    """YAML text of a plausible value of a leaf field; `dirty`: also out of range, of
    another type, or a tricky scalar."""
    if meta.get("choices"):
        good = st.sampled_from([str(c) for c in meta["choices"]])
    elif tp is bool:
        good = st.sampled_from(["true", "false"])
    elif tp is int:
        good = st.sampled_from(["0", "1", "2", "4", "8", "32", "64", "256", "1024"])
        if dirty:
            good = st.one_of(good, st.integers(min_value=-(2**66), max_value=2**66).map(str))
    elif tp is float:
        good = st.sampled_from(["0.0", "0.1", "0.5", "0.9", "1.0", "1e-4", "2"])
        if dirty:
            good = st.one_of(good, st.floats(allow_nan=True, allow_infinity=True).map(repr))
    else:
        good = st.sampled_from(WORDS)
        if dirty:
            good = st.one_of(good, st.text(max_size=6).map(repr))
    return st.one_of(*[good] * 6, tricky) if dirty else good


def _leaf(spec, dirty: bool) -> st.SearchStrategy:
    tp, meta = spec
    if isinstance(tp, tuple):  # a list of scalars
        items = st.lists(_scalar(tp[1], meta, dirty), max_size=3)
        listed = items.map(lambda v: "[" + ", ".join(v) + "]")
        return st.one_of(listed, _scalar(tp[1], meta, dirty)) if dirty else listed
    return _scalar(tp, meta, dirty)


def _section(tree: dict, depth: int, dirty: bool) -> st.SearchStrategy:
    """Flow-style YAML text of a section: some of its keys (and a stray one) with values."""

    def entries(keys: list[str]) -> st.SearchStrategy:
        values = [_value(tree[k], depth - 1, dirty).map(lambda v, k=k: f"{k}: {v}") for k in keys]
        return st.tuples(*values).map(list)

    items = st.lists(st.sampled_from(sorted(tree)), unique=True, max_size=5).flatmap(entries)
    if dirty:  # and a stray key
        stray = st.tuples(other_key, _scalar(str, {})).map(lambda kv: f"{kv[0]}: {kv[1]}")
        items = st.one_of(*[items] * 6, st.tuples(items, stray).map(lambda t: [*t[0], t[1]]))
    return items.map(lambda v: "{" + ", ".join(v) + "}")


def _value(spec, depth: int, dirty: bool) -> st.SearchStrategy:
    """Flow-style YAML text for a key of the schema (`spec` from `_schema_tree`)."""
    if isinstance(spec, dict):
        plain = _section(spec, depth, dirty) if depth > 0 else tricky
    elif spec[0] == "sections":
        one = _section(spec[1], depth, dirty) if depth > 0 else tricky
        listed = st.lists(one, min_size=1, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
        plain = st.one_of(listed, one) if dirty else listed
    else:
        plain = _leaf(spec, dirty)
    if not dirty:
        return plain
    anchored = st.tuples(st.sampled_from(ANCHORS), plain).map(lambda t: f"&{t[0]} {t[1]}")
    alias = st.sampled_from(ANCHORS).map(lambda a: f"*{a}")
    tagged = st.tuples(st.sampled_from(["!!map", "!!seq", "!!str", "!foo"]), plain).map(
        lambda t: f"{t[0]} {t[1]}"
    )
    return st.one_of(*[plain] * 12, anchored, alias, tagged, tricky)


VALID_DATA = "data:\n  train:\n    - type: synthetic\n"
# Data sections that a `--set` into `data.train[0]` or `data.dev` has to walk through.
ODD_DATA = [
    "data:\n  train: [abc]\n",
    "data:\n  train: [[1]]\n",
    "data:\n  train: []\n  dev: 5\n",
    "data: 5\n",
    "data:\n  train: abc\n",
]


def _top_level(dirty: bool) -> st.SearchStrategy:
    keys = sorted(k for k in SCHEMA if dirty or k != "data")
    return st.sampled_from(keys).flatmap(
        lambda k: _value(SCHEMA[k], 3, dirty).map(lambda v, k=k: f"{k}: {v}\n")
    )


def _unique_keys(lines: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for line in lines:
        seen.setdefault(line.split(":")[0], line)
    return list(seen.values())


documents = st.one_of(
    # A valid data section, then other sections with plausible values (block style,
    # values in flow style): reaches the cross-field rules.
    st.lists(_top_level(False), max_size=5).map(
        lambda lines: VALID_DATA + "".join(_unique_keys(lines))
    ),
    st.lists(_top_level(False), max_size=5).map(
        lambda lines: VALID_DATA + "".join(_unique_keys(lines))
    ),
    # Anything: wrong types, out of range, tags, anchors and aliases, stray keys.
    st.lists(_top_level(True), max_size=5).map(lambda lines: VALID_DATA + "".join(lines)),
    st.lists(_top_level(True), max_size=6).map("".join),
    st.tuples(st.sampled_from(ODD_DATA), st.lists(_top_level(True), max_size=3)).map(
        lambda t: t[0] + "".join(t[1])
    ),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
)
# `--set KEY=VALUE`: a real key (sometimes an index or a prefix) or a made-up one.
override_key = st.one_of(
    st.sampled_from(LEAF_PATHS),
    st.sampled_from(LEAF_PATHS),
    st.sampled_from(
        [
            "data.train[0].type",
            "data.train[0][0]",
            "data.train[0].source",
            "data.train[3].path",
            "data.dev.type",
            "data.train",
            "data",
            "x[0]",
        ]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.[]0=", max_size=12),
)
override_value = st.one_of(
    _scalar(int, {}), _scalar(float, {}), _scalar(str, {}), st.text(max_size=8)
)
overrides = st.lists(
    st.tuples(override_key, override_value).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=documents, sets=overrides)
def test_validate_never_raises_and_errors_are_single_lines(tmp_path_factory, text, sets):
    folder = tmp_path_factory.getbasetemp() / "properties"
    folder.mkdir(exist_ok=True)
    path = os.path.join(folder, "exp.yaml")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", path, *[f"--set={s}" for s in sets]])
    lines = err.getvalue().splitlines()
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert out.getvalue().startswith("# kerastx: valid")
        return
    assert code == 2, (code, lines)
    assert lines, "exit 2 without a message"
    for line in lines:
        assert line.startswith(PREFIX) and line[len(PREFIX) :].strip(), line
    assert len(lines) == len(set(lines)), lines
