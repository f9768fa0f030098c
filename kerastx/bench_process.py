"""A bench row measured in a fresh Python process (shared by `bench` and `bench_memory`)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_isolated(module: str, call: str, what: str) -> dict:
    """Runs `kerastx.<module>.<call>` (a call expression returning a JSON-able dict) in a
    fresh Python process and returns its dict; RuntimeError naming `what` if it fails."""
    code = (
        "import json, sys\n"
        f"from kerastx import {module}\n"
        f"row = {module}.{call}\n"
        "sys.stdout.write('KERASTX_ROW ' + json.dumps(row, default=float) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("KERASTX_ROW "):
            return json.loads(line[len("KERASTX_ROW ") :])
    tail = "\n".join(proc.stderr.splitlines()[-20:])
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
