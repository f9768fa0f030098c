"""Per-example conditions as text: vector cells, and the `CONDITION<TAB>TEXT` input line.

A model takes a condition per example (`kerastx.models`): a tag id (`model.num_conditions`,
tags from `conditions.txt`) or a float vector (`model.condition_dim`). In a corpus the
condition is a TSV cell or a TFRecord feature of the `condition_column`:

- a tag: the cell's text (a TFRecord bytes or int64 value);
- a vector: `condition_dim` finite numbers separated by spaces in the cell (a TFRecord
  `float_list`, or a bytes value holding the same text).

Where the condition travels with a text outside a corpus (the inputs of `kerastx
predict`, the distinct inputs of an evaluation and their references, the export's parity
check), a conditioned example is one line `CONDITION<TAB>TEXT`: the tag, or the vector's
numbers separated by spaces, then a tab, then the text. A vector is written back in its
shortest float32 form (`vector_text`), so a line read back gives the same float32 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from kerastx.data.errors import DataError

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def vector_text(values) -> str:
    """A float32 vector as text: each value's shortest round-trip float32 form."""
    return " ".join(np.format_float_positional(np.float32(v), trim="-") for v in values)


def vector_problem(text: str, dim: int) -> str | None:
    """Why `text` is not `dim` finite numbers separated by spaces, or None."""
    parts = text.split()
    if len(parts) != dim:
        return f"expected {dim} numbers separated by spaces (model.condition_dim), got {len(parts)}"
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            return f"{part!r} is not a number"
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            return f"{part!r} is not a finite float32 number (NaN and inf are refused)"
    return None


def parse_vectors(
    values: list[str], dim: int, where: Callable[[int], str], column: str | None
) -> np.ndarray:
    """Condition cells -> `(N, dim)` float32.

    Args:
        values: list of str. One cell per example.
        dim: int. `model.condition_dim`.
        where: callable i -> "file:line" (or "file: record i") of example i.
        column: str or None. The condition column (named in messages).

    Raises:
        DataError: one line naming the file, line and column of the first bad cell.
    """
    out = np.empty((len(values), dim), np.float32)
    named = f" column '{column}'" if column else ""
    for i, text in enumerate(values):
        problem = vector_problem(text, dim)
        if problem is not None:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise DataError(f"{where(i)}: condition{named} {shown!r}: {problem}")
        out[i] = [float(p) for p in text.split()]
    return out


def split_line(line: str) -> tuple[str, str]:
    """`CONDITION<TAB>TEXT` -> (condition, text); ValueError without a tab."""
    condition, sep, text = line.partition("\t")
    if not sep:
        raise ValueError("no tab")
    return condition, text


def join_line(condition: str, text: str) -> str:
    """(condition, text) -> `CONDITION<TAB>TEXT`."""
    return f"{condition}\t{text}"
