"""Which checkpoint is loaded, damaged checkpoints, and saves cut at every point.

- `export.checkpoint` (auto, best, last, averaged) picks what evaluate, predict and
  export load, and one line says which and why (issue 13, case 22).
- A damaged newest checkpoint: predict, evaluate, export and `training.init_from` fall
  back to the one before, as the trainer does (the same function); none readable is one
  line (cases 13, 15).
- A training killed at points inside a checkpoint save always resumes from a complete
  checkpoint, and (a real kill) continues bit for bit (tests/train/checkpoint_fault_child.py
  lists the points).
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kerastx import cli, runs
from kerastx.config import load_experiment
from kerastx.train.checkpoints import listed_checkpoints
from kerastx.train.loop import Trainer
from tests.train.util import ROOT

EXPERIMENT = os.path.join(ROOT, "experiments", "copy_task.yaml")
SMALL = [
    "data.train[0].num_examples=200",
    "data.test=null",
    "export.enabled=false",
    "training.log_every=2",
    "training.steps_per_execution=2",
    "training.checkpoint_every=2",
    "decoding.max_length=14",
]
# A run with a best and an averaged checkpoint: dev evaluated at steps 2 and 4.
WITH_DEV = [
    *SMALL,
    "training.train_steps=4",
    "training.average_last=2",
    "evaluation.every=2",
    "evaluation.num_samples=0",
    "evaluation.attention_images=0",
    "data.dev.num_examples=8",
    "export.parity_examples=4",
]
NOT_AN_SSTABLE = "not an sstable (bad magic number)"


def _sets(run_dir, items):
    args = []
    for item in (f"run_dir={run_dir}", *items):
        args += ["--set", item]
    return args


def _cli(capsys, *args):
    """`kerastx ARGS`: (exit code, the error lines)."""
    capsys.readouterr()
    code = cli.main(list(args))
    return code, [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]


def _messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("faults") / "trained")
    assert cli.main(["train", EXPERIMENT, *_sets(run_dir, WITH_DEV)]) == 0
    return run_dir


def _copy(trained, tmp_path, *drop):
    """A copy of the trained run without the `checkpoints/<drop>` directories."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(trained, run_dir)
    for name in drop:
        shutil.rmtree(os.path.join(run_dir, "checkpoints", name))
    return run_dir


def _best(run_dir):
    return tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints", "best"))


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"garbage!" * 16)


# -- case 22: export.checkpoint ---------------------------------------------------------


def test_evaluate_loads_the_checkpoint_export_checkpoint_names(trained, tmp_path, capsys, caplog):
    run_dir = _copy(trained, tmp_path)
    best = _best(run_dir)
    with caplog.at_level(logging.INFO, logger="kerastx"):
        code, _ = _cli(
            capsys, "evaluate", run_dir, "--split", "dev", "--set", "export.checkpoint=best"
        )
    assert code == 0
    relative = os.path.relpath(best, run_dir)
    assert f"loaded {relative} (export.checkpoint=best: best by loss)" in _messages(caplog)
    with open(os.path.join(run_dir, "eval_dev.json")) as f:
        assert json.load(f)["checkpoint"] == best


@pytest.mark.parametrize(
    "drop, choice, loaded, why",
    [
        ((), "auto", "averaged/ckpt-4", "auto: averaged (training.average_last)"),
        ((), "best", "BEST", "best: best by loss"),
        ((), "last", "ckpt-4", "last: the newest checkpoint"),
        ((), "averaged", "averaged/ckpt-4", "averaged: averaged (training.average_last)"),
        (("averaged",), "auto", "BEST", "auto: best by loss"),
        (("averaged", "best"), "auto", "ckpt-4", "auto: the newest checkpoint"),
    ],
)
def test_load_run_follows_export_checkpoint(trained, tmp_path, caplog, drop, choice, loaded, why):
    run_dir = _copy(trained, tmp_path, *drop)
    expected = _best(run_dir) if loaded == "BEST" else os.path.join(run_dir, "checkpoints", loaded)
    with caplog.at_level(logging.INFO, logger="kerastx"):
        run = runs.load_run(run_dir, [f"export.checkpoint={choice}"])
    assert run.checkpoint == expected
    relative = os.path.relpath(expected, run_dir)
    assert _messages(caplog)[-1] == f"loaded {relative} (export.checkpoint={why})"


def test_asking_for_a_checkpoint_the_run_lacks_is_one_line(trained, tmp_path, capsys):
    run_dir = _copy(trained, tmp_path, "averaged", "best")
    checkpoints = os.path.join(run_dir, "checkpoints")
    code, errors = _cli(capsys, "evaluate", run_dir, "--set", "export.checkpoint=best")
    assert code == 2
    assert errors == [
        f"kerastx evaluate: error: {run_dir}: export.checkpoint=best but the run has no best "
        f"checkpoint ({checkpoints}/best is written when a dev evaluation improves "
        f"evaluation.best_metric=loss); use export.checkpoint=last or auto"
    ]
    code, errors = _cli(capsys, "evaluate", run_dir, "--set", "export.checkpoint=averaged")
    assert code == 2
    assert errors == [
        f"kerastx evaluate: error: {run_dir}: export.checkpoint=averaged but the run has no "
        f"averaged checkpoint ({checkpoints}/averaged is written at the end of training when "
        f"training.average_last > 1); use export.checkpoint=last or auto"
    ]


def _state(directory, *names):
    """A `checkpoint` state file listing `names` (oldest first) and their index files."""
    os.makedirs(directory, exist_ok=True)
    for name in names:
        open(os.path.join(directory, name + ".index"), "w").close()
    lines = [f'model_checkpoint_path: "{names[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in names]
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_auto_skips_an_averaged_checkpoint_older_than_the_newest(tmp_path):
    root = str(tmp_path / "checkpoints")
    _state(root, "ckpt-4", "ckpt-6")
    _state(os.path.join(root, "averaged"), "ckpt-4")  # training went on after averaging
    _state(os.path.join(root, "best"), "best-2")
    assert runs.checkpoint_candidates(str(tmp_path)) == [
        (f"{root}/best/best-2", "export.checkpoint=auto: best by loss"),
        (f"{root}/ckpt-6", "export.checkpoint=auto: the newest checkpoint"),
        (f"{root}/ckpt-4", "export.checkpoint=auto: the newest readable checkpoint"),
    ]


def test_a_best_checkpoint_whose_save_was_cut_is_ignored(tmp_path, caplog):
    root = str(tmp_path / "checkpoints")
    _state(root, "ckpt-2")
    os.makedirs(os.path.join(root, "best"))
    open(os.path.join(root, "best", "best-2.index"), "w").close()  # no state file yet
    with caplog.at_level(logging.WARNING, logger="kerastx"):
        assert runs.checkpoint_candidates(str(tmp_path)) == [
            (f"{root}/ckpt-2", "export.checkpoint=auto: the newest checkpoint")
        ]
    assert _messages(caplog, logging.WARNING) == [
        f"{root}/best: checkpoint files exist but the 'checkpoint' state file is missing; "
        f"restore it or move the files away to start over; ignored"
    ]


# -- case 15: a damaged newest checkpoint ------------------------------------------------


@pytest.fixture
def damaged(trained, tmp_path):
    """A copy of the run whose newest checkpoint (ckpt-4) has a garbage index; without
    best and averaged checkpoints, so the newest is what auto loads."""
    run_dir = _copy(trained, tmp_path, "averaged", "best")
    _garbage(os.path.join(run_dir, "checkpoints", "ckpt-4.index"))
    return run_dir


def _verb_args(verb, run_dir, tmp_path):
    if verb == "predict":
        source = tmp_path / "in.txt"
        source.write_text("a b c\n")
        return ["predict", run_dir, "--input", str(source), "--output", str(tmp_path / "out")]
    if verb == "evaluate":
        return ["evaluate", run_dir, "--split", "dev"]
    return ["export", run_dir]


@pytest.mark.parametrize("verb", ["predict", "evaluate", "export"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    damaged, tmp_path, capsys, caplog, verb
):
    with caplog.at_level(logging.INFO, logger="kerastx"):
        code, errors = _cli(capsys, *_verb_args(verb, damaged, tmp_path))
    assert code == 0 and errors == []
    bad = os.path.join(damaged, "checkpoints", "ckpt-4")
    assert _messages(caplog, logging.WARNING)[:2] == [
        f"checkpoint {bad} cannot be restored ({NOT_AN_SSTABLE}); trying an older one",
        f"restored {bad[:-1]}2; skipped unreadable newer checkpoint(s): ckpt-4: {NOT_AN_SSTABLE}",
    ]
    assert (
        "loaded checkpoints/ckpt-2 (export.checkpoint=auto: the newest readable checkpoint)"
    ) in _messages(caplog)


@pytest.mark.parametrize("verb", ["predict", "evaluate", "export"])
def test_no_readable_checkpoint_is_one_line(damaged, tmp_path, capsys, verb):
    _garbage(os.path.join(damaged, "checkpoints", "ckpt-2.index"))
    code, errors = _cli(capsys, *_verb_args(verb, damaged, tmp_path))
    assert code == 2
    assert errors == [
        f"kerastx {verb}: error: {damaged}/checkpoints: no checkpoint can be restored "
        f"(ckpt-4: {NOT_AN_SSTABLE}; ckpt-2: {NOT_AN_SSTABLE})"
    ]


# -- case 13: training.init_from a damaged run --------------------------------------------


def _warm(run_dir, source):
    return [
        "train",
        EXPERIMENT,
        *_sets(run_dir, [*SMALL, "training.train_steps=2", "evaluation.every=0", "data.dev=null"]),
        "--set",
        f"training.init_from={source}",
    ]


def test_init_from_a_run_without_a_readable_checkpoint_is_one_line(damaged, tmp_path, capsys):
    _garbage(os.path.join(damaged, "checkpoints", "ckpt-2.index"))
    code, errors = _cli(capsys, *_warm(str(tmp_path / "warm"), damaged))
    assert code == 2
    assert errors == [
        f"kerastx train: error: training.init_from: {damaged}/checkpoints: no checkpoint can "
        f"be restored (ckpt-4: {NOT_AN_SSTABLE}; ckpt-2: {NOT_AN_SSTABLE}); point "
        f"training.init_from at a readable checkpoint"
    ]
    prefix = os.path.join(damaged, "checkpoints", "ckpt-4")
    code, errors = _cli(capsys, *_warm(str(tmp_path / "warm2"), prefix))
    assert code == 2
    assert errors == [
        f"kerastx train: error: training.init_from: {damaged}/checkpoints: no checkpoint can "
        f"be restored (ckpt-4: {NOT_AN_SSTABLE}); point training.init_from at a readable "
        f"checkpoint"
    ]


def test_init_from_a_run_with_a_damaged_newest_checkpoint_uses_the_one_before(
    damaged, tmp_path, capsys, caplog
):
    with caplog.at_level(logging.INFO, logger="kerastx"):
        code, errors = _cli(capsys, *_warm(str(tmp_path / "warm"), damaged))
    assert code == 0 and errors == []
    bad = os.path.join(damaged, "checkpoints", "ckpt-4")
    assert f"checkpoint {bad} cannot be restored ({NOT_AN_SSTABLE}); trying an older one" in (
        _messages(caplog, logging.WARNING)
    )
    assert any(m.endswith(f"variables from {bad[:-1]}2") for m in _messages(caplog))


# -- saves cut at every point --------------------------------------------------------------

FAULT = [
    *SMALL,
    "training.train_steps=6",
    "training.keep_checkpoints=1",
    "training.deterministic=true",
    "model.dropout=0.1",
    "evaluation.every=0",
    "data.dev=null",
]
CUT = 4  # the save that is cut: ckpt-2 is complete, ckpt-4 is being written
# point -> the checkpoint a resume must restore (None: a new run).
POINTS = {
    "config_tmp": None,
    "manifest_tmp": None,
    "temp_data_partial": 2,
    "temp_written": 2,
    "data_moved_no_index": 2,
    "merged_index_partial": 2,
    "merged": 2,
    "state_tmp_partial": 2,
    "state_updated": 4,
    "mid_sweep": 4,
}


def _child(mode, run_dir, snap_dir):
    """tests/train/checkpoint_fault_child.py training the FAULT run in `mode`."""
    command = [sys.executable, "-m", "tests.train.checkpoint_fault_child"]
    command += [mode, run_dir, snap_dir, str(CUT), "--", EXPERIMENT, *_sets(run_dir, FAULT)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _rows(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r["loss"], r["grad_norm"], r["ids_hash"]) for r in records]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """One uninterrupted run (the reference) that copied its run directory at each point."""
    base = tmp_path_factory.mktemp("cut")
    run_dir, snap_dir = str(base / "reference"), str(base / "snapshots")
    os.makedirs(snap_dir)
    proc = _child("snapshot", run_dir, snap_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(snap_dir)) == sorted(POINTS)
    assert [row[0] for row in _rows(run_dir)] == list(range(1, 7))
    return run_dir, snap_dir


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_save_cut_at_any_point_resumes_from_a_complete_checkpoint(snapshots, tmp_path, point):
    run_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(snapshots[1], point), run_dir)
    cfg, _ = load_experiment([EXPERIMENT], [f"run_dir={run_dir}", *FAULT])
    trainer = Trainer(cfg, progress=False)  # the run directory is accepted as it is
    restored = trainer.checkpoints.restore_latest()
    expected = POINTS[point]
    if expected is None:
        assert restored is None and trainer.step == 0
    else:
        assert restored == os.path.join(run_dir, "checkpoints", f"ckpt-{expected}")
        assert trainer.step == expected


def _tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if not key.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))
    }


def test_a_kill_9_between_the_checkpoint_files_and_the_state_file_resumes_bit_exactly(
    snapshots, tmp_path, capsys
):
    reference = snapshots[0]
    run_dir = str(tmp_path / "run")
    proc = _child("kill:merged", run_dir, str(tmp_path))
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert os.path.exists(os.path.join(run_dir, "checkpoints", f"ckpt-{CUT}.index"))
    capsys.readouterr()
    assert cli.main(["train", EXPERIMENT, *_sets(run_dir, FAULT)]) == 0
    assert f"resumed from {run_dir}/checkpoints/ckpt-2 at step 2" in capsys.readouterr().err
    assert _rows(run_dir) == _rows(reference)
    ours, theirs = (
        _tensors(f"{run_dir}/checkpoints/ckpt-6"),
        _tensors(f"{reference}/checkpoints/ckpt-6"),
    )
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_listed_checkpoints_of_a_relative_directory(tmp_path, monkeypatch):
    # `make predict RUN=runs/x` gives a relative run dir: its checkpoints must be found
    # where they are (a second join once made run/checkpoints/run/checkpoints/ckpt-2).
    monkeypatch.chdir(tmp_path)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)), "run/checkpoints", max_to_keep=2
    )
    manager.save()
    manager.save()
    assert listed_checkpoints("run/checkpoints") == [
        "run/checkpoints/ckpt-2",
        "run/checkpoints/ckpt-1",
    ]
