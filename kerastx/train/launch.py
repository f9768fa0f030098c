"""`kerastx launch --workers N EXP`: a multi-worker run on this machine.

Starts N `kerastx train` processes with `distribution.strategy=multi_worker` and a
`TF_CONFIG` naming free localhost ports, prefixes their output with `[worker i]`, and
waits. When one worker fails the others are stopped, so a crash never leaves a hang;
the exit code is the first failure's. This is the way to try multi-worker training
before a cluster: on a cluster, each machine runs `kerastx train` with its own
`TF_CONFIG` (or `distribution.cluster_resolver: slurm`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from kerastx.errors import KerastxError

GRACE_SECONDS = 10


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on localhost right now."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def worker_env(ports: list[int], index: int) -> dict:
    """The environment of worker `index`, with its TF_CONFIG."""
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )
    return env


def _pump(index: int, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[worker {index}] {line}")
        out.flush()


def run(
    experiment: list[str], overrides: list[str], workers: int = 2, extra_env: dict | None = None
) -> int:
    """Runs `kerastx train` in `workers` local processes; returns the exit code.

    Args:
        experiment: list of str. Experiment files.
        overrides: list of str. `--set` overrides passed to every worker.
        workers: int. Number of worker processes (`--workers`), at least 1.
        extra_env: dict or None. Extra environment for every worker (tests).

    Raises:
        KerastxError: `workers` < 1 (one line naming `--workers`).
    """
    if workers < 1:
        raise KerastxError(f"--workers: must be >= 1; got {workers}")
    ports = free_ports(workers)
    args = [*experiment]
    for item in [*overrides, "distribution.strategy=multi_worker"]:
        args += ["--set", item]
    procs = []
    for i in range(workers):
        env = worker_env(ports, i)
        env.update(extra_env or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "kerastx", "train", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=_pump, args=(i, proc.stdout, sys.stdout), daemon=True).start()
        procs.append(proc)
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                code = failed[0].returncode
                _stop(procs)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    for p in procs:
        p.wait()
        if code == 0 and p.returncode:
            code = p.returncode
    return code


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
