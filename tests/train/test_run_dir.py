"""The run directory: only a new, empty or kerastx run directory is trained in, one
training at a time (the lock), a config without checkpoint may change, and an
unwritable directory is one line (issue 13: cases 2, 3, 9, 18)."""

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest

from kerastx import cli, workflow
from kerastx.config import ConfigError, write_resolved
from kerastx.config.rundir import (
    CONFIG_FILE,
    HEADER,
    RunDirError,
    check_run_dir,
    has_checkpoint,
)
from kerastx.errors import KerastxError
from kerastx.train import run_lock, strategy
from kerastx.train.run_lock import RunDirBusy, RunLock
from tests.train.fakes import FakeData
from tests.train.util import ROOT, make_cfg

EXPERIMENT = os.path.join(ROOT, "experiments", "copy_task.yaml")
TINY = [
    "training.train_steps=2",
    "training.checkpoint_every=2",
    "training.log_every=2",
    "training.steps_per_execution=2",
    "evaluation.every=0",
    "data.dev=null",
    "data.test=null",
    "export.enabled=false",
    "data.train[0].num_examples=64",
]
HOST = socket.gethostname()
WHAT_TO_DO = (
    "training would write its config, vocabularies, checkpoints and logs into it: choose a "
    "new or empty directory, or an earlier run to resume"
)
NOT_WRITABLE = (
    "not writable (permission denied, read-only or immutable); training writes its config, "
    "checkpoints and logs there: make it writable or choose another run_dir"
)


def _train(capsys, run_dir, *extra):
    """`kerastx train` of the tiny copy task: (exit code, the stderr lines)."""
    args = ["train", EXPERIMENT]
    for item in (f"run_dir={run_dir}", *TINY, *extra):
        args += ["--set", item]
    capsys.readouterr()
    code = cli.main(args)
    return code, capsys.readouterr().err.splitlines()


def _errors(lines):
    return [line for line in lines if line.startswith("kerastx train: error: ")]


def _tree(path):
    """Every file under `path` with its bytes (to show nothing was written)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


# -- case 2: a directory that is not a kerastx run ------------------------------------------


@pytest.fixture
def foreign(tmp_path):
    """A project directory: a log of its own and a notes file."""
    path = tmp_path / "project"
    path.mkdir()
    (path / "train_log.jsonl").write_text('{"mine": 1}\n')
    (path / "notes.txt").write_text("hello\n")
    return str(path)


def test_a_non_empty_foreign_directory_is_refused_and_left_untouched(foreign, capsys):
    before = _tree(foreign)
    code, lines = _train(capsys, foreign)
    assert code == 2
    assert _errors(lines) == [
        f"kerastx train: error: run_dir={foreign}: not a kerastx run directory: it is not "
        f"empty (2 entries: notes.txt, train_log.jsonl) and has no config.yaml written by "
        f"kerastx; {WHAT_TO_DO}"
    ]
    assert _tree(foreign) == before  # no config, vocab, lock, checkpoint or log line


def test_a_relative_run_dir_is_shown_with_its_absolute_path(foreign, capsys, monkeypatch):
    work = os.path.join(os.path.dirname(foreign), "a", "b")
    os.makedirs(work)
    monkeypatch.chdir(work)
    code, lines = _train(capsys, "../../project")
    assert code == 2
    assert _errors(lines)[0].startswith(
        f"kerastx train: error: run_dir=../../project ({foreign}): not a kerastx run directory"
    )


def test_the_root_directory_is_refused():
    # Through check_run_dir only: a regression must not let a test train into /.
    entries = sorted(set(os.listdir("/")) - {".lock", "config.yaml.tmp"})
    listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    with pytest.raises(RunDirError) as err:
        check_run_dir("/")
    assert str(err.value) == (
        f"run_dir=/: not a kerastx run directory: it is not empty ({len(entries)} entries: "
        f"{listed}) and has no config.yaml written by kerastx; {WHAT_TO_DO}"
    )


def test_a_foreign_config_yaml_does_not_make_a_run(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("name: someone else's\n")
    with pytest.raises(RunDirError, match="not a kerastx run directory"):
        check_run_dir(str(tmp_path))


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunDirError) as err:
        check_run_dir(str(path))
    assert str(err.value) == f"run_dir={path}: exists and is not a directory; choose another"


@pytest.mark.parametrize(
    "files",
    [
        {},  # empty
        {".lock": ""},  # a training killed before writing its config
        {".lock": "", "config.yaml.tmp": "# half"},  # killed while writing it
        {"vocab/manifest.json": "{}", "vocab/shared.txt": "a\n"},  # `kerastx vocab` first
        # Multi-worker: another worker writing the vocabularies while the chief checks.
        {"vocab/source.txt": "a\n", "vocab/target.txt.tmp-123": "a"},
        {CONFIG_FILE: HEADER + "name: x\n", "notes.txt": "mine"},  # a run (own files kept)
        {"checkpoints/variables.json": "{}", "logs/x": ""},  # a run that lost its config
    ],
    ids=["empty", "lock", "config-tmp", "vocab", "vocab-being-built", "run", "run-without-config"],
)
def test_accepted_directories(tmp_path, files):
    for name, text in files.items():
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_text(text)
    check_run_dir(str(tmp_path))
    check_run_dir(str(tmp_path / "new" / "deeper"))  # absent: created by training


def test_a_vocab_folder_holding_other_files_is_foreign(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "words.csv").write_text("a\n")
    with pytest.raises(RunDirError, match="not a kerastx run directory"):
        check_run_dir(str(tmp_path))


# -- case 3: the lock ---------------------------------------------------------------------

HOLDER = """
import sys, time
from kerastx.train import run_lock
with run_lock.hold(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held(tmp_path):
    """A second process holding the lock of `tmp_path/run` until the test ends."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        yield run_dir, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()


def test_a_second_training_is_refused_naming_the_holder(held, capsys):
    run_dir, pid = held
    with open(os.path.join(run_dir, ".lock")) as f:
        holder = json.load(f)
    assert holder["pid"] == pid and holder["host"] == HOST
    code, lines = _train(capsys, run_dir)
    assert code == 2
    assert _errors(lines) == [
        f"kerastx train: error: {run_dir}: another training is using this run directory "
        f"(pid {pid} on host {HOST}, since {holder['since']}; lock file {run_dir}/.lock); "
        f"wait for it to end or stop it, or choose another run_dir"
    ]
    assert os.listdir(run_dir) == [".lock"]  # nothing else was written


def test_the_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with run_lock.hold(str(tmp_path)) as lock:
        assert lock.holder["pid"] == os.getpid()
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()} on host {HOST}"):
            RunLock(str(tmp_path)).acquire()
    with run_lock.hold(str(tmp_path)):  # released
        pass
    assert (tmp_path / ".lock").read_text() == ""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_and_held_through_the_whole_workflow(
    tmp_path, monkeypatch, caplog
):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    stale = {"pid": _dead_pid(), "host": HOST, "since": "2026-01-02T03:04:05+00:00"}
    with open(os.path.join(run_dir, ".lock"), "w") as f:
        json.dump(stale, f)
    cfg = make_cfg(run_dir, "training.train_steps=2", "training.average_last=2")
    cfg.training.checkpoint_every = 1
    cfg.export.enabled = True
    busy = {}

    def probe(name):
        def step(*args, **kwargs):
            with pytest.raises(RunDirBusy) as err:
                RunLock(run_dir).acquire()
            busy[name] = f"pid {os.getpid()} on host {HOST}" in str(err.value)
            return name

        return step

    for name in ("average_last", "export", "show_exported_examples"):
        monkeypatch.setattr(workflow, name, probe(name))
    with caplog.at_level(logging.WARNING, logger="kerastx"):
        result = workflow.train(cfg, data=FakeData())
    assert result["step"] == 2 and result["export"] == "export"
    assert busy == {"average_last": True, "export": True, "show_exported_examples": True}
    assert [r.getMessage() for r in caplog.records if "stale" in r.getMessage()] == [
        f"{run_dir}/.lock: took over a stale lock (pid {stale['pid']} on host {HOST}, "
        f"since {stale['since']}): that process is no longer running"
    ]
    with open(os.path.join(run_dir, ".lock")) as f:
        assert f.read() == ""  # released
    RunLock(run_dir).acquire()


class _FailingTrainer:
    def __init__(self, cfg, data=None, strategy=None):
        assert os.path.getsize(os.path.join(cfg.run_dir, ".lock")) > 0  # held
        self.chief = True

    def run(self):
        raise KerastxError("data went wrong")


def test_the_lock_is_released_when_training_fails(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    monkeypatch.setattr(workflow, "Trainer", _FailingTrainer)
    with pytest.raises(KerastxError, match="data went wrong"):
        workflow.train(make_cfg(run_dir))
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()


def test_a_worker_that_is_not_the_chief_takes_no_lock(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    seen = []

    class Worker:
        def __init__(self, cfg, data=None, strategy=None):
            seen.append(os.path.exists(os.path.join(cfg.run_dir, ".lock")))
            self.chief = False

        def run(self):
            return {"step": 2, "eval": {}, "complete": None}

    monkeypatch.setattr(strategy, "is_chief", lambda s: False)
    monkeypatch.setattr(workflow, "Trainer", Worker)
    assert workflow.train(make_cfg(run_dir))["step"] == 2
    assert seen == [False] and not os.path.exists(run_dir)


# -- case 9: a run that failed before its first checkpoint ----------------------------------


def test_a_run_that_failed_before_any_checkpoint_takes_the_fixed_config(tmp_path, capsys, caplog):
    run_dir = str(tmp_path / "run")
    missing = str(tmp_path / "missing")
    bad = f"data.train=[{{type: parallel, source: {missing}.src, target: {missing}.tgt}}]"
    code, lines = _train(capsys, run_dir, bad)
    assert code == 2 and _errors(lines) == [f"kerastx train: error: {missing}.src: file not found"]
    assert not has_checkpoint(run_dir)
    with caplog.at_level(logging.INFO, logger="kerastx"):
        code, lines = _train(capsys, run_dir)
    assert code == 0, lines
    assert (
        f"{run_dir}/config.yaml: the run has no checkpoint yet, so the changed config "
        f"replaces the old one (changed: data.train)"
    ) in [r.getMessage() for r in caplog.records]
    assert has_checkpoint(run_dir)


def test_with_a_checkpoint_a_changed_config_is_still_refused(tmp_path):
    run_dir = str(tmp_path / "run")
    write_resolved(make_cfg(run_dir))
    os.makedirs(os.path.join(run_dir, "checkpoints", "best"))
    open(os.path.join(run_dir, "checkpoints", "best", "best-2.index"), "w").close()
    with pytest.raises(ConfigError) as err:
        write_resolved(make_cfg(run_dir, "model.ffn_dim=16"))
    assert str(err.value) == (
        f"{run_dir}/config.yaml: cannot resume this run with a changed config "
        f"(model.ffn_dim: 64 -> 16); restore those values, or use a new run_dir"
    )


# -- case 18: a directory this process cannot write ------------------------------------------


def _chattr(flag, path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, path], capture_output=True).returncode == 0


@pytest.fixture
def immutable(tmp_path):
    """`mark(path)`: makes `path` immutable (chattr +i; skips where that is not allowed)."""
    marked = []

    def mark(path):
        if not _chattr("+i", path):
            pytest.skip("chattr +i is not available or not permitted here")
        marked.append(path)

    yield mark
    for path in reversed(marked):
        _chattr("-i", path)


def test_a_read_only_directory_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # 0o550
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        code, lines = _train(capsys, str(run_dir))
    finally:
        run_dir.chmod(0o755)
    assert code == 2
    assert _errors(lines) == [f"kerastx train: error: run_dir={run_dir}: {NOT_WRITABLE}"]


def test_an_immutable_run_is_one_line_and_untouched(tmp_path, capsys, immutable):
    run_dir = str(tmp_path / "run")
    write_resolved(make_cfg(run_dir))
    before = _tree(run_dir)
    immutable(os.path.join(run_dir, CONFIG_FILE))
    immutable(run_dir)
    code, lines = _train(capsys, run_dir)
    assert code == 2
    assert _errors(lines) == [f"kerastx train: error: run_dir={run_dir}: {NOT_WRITABLE}"]
    assert _tree(run_dir) == before


def test_a_run_dir_under_an_immutable_parent_is_one_line(tmp_path, capsys, immutable):
    parent = str(tmp_path / "parent")
    os.makedirs(parent)
    immutable(parent)
    code, lines = _train(capsys, os.path.join(parent, "new", "run"))
    assert code == 2
    assert _errors(lines) == [
        f"kerastx train: error: run_dir={parent}/new/run: cannot be created: {parent} is "
        f"{NOT_WRITABLE}"
    ]
