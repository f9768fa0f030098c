"""Atomic writers shared by the recipe corpora (cmudict, gettext, stdlib).

A recipe's files are written to a temporary name and renamed into place, so a
preparation that is killed half-way never leaves a short file that a later run would
take for a finished one. This module imports nothing from kerastx, so every recipe
module can use it without an import cycle.
"""

from __future__ import annotations

import json
import os


def write_lines(path: str, lines: list[str]) -> None:
    """Writes `lines`, each ended by a newline, to `path` (UTF-8), replacing it atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def write_manifest(path: str, info: dict) -> None:
    """Writes a recipe's manifest (sorted, indented JSON, UTF-8 kept), replacing it atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True, ensure_ascii=False)
    os.replace(tmp, path)
