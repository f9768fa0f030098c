"""Training on a streamed corpus through the real command line: kill, preempt, a lost or
damaged data position and two local workers, each resumed to the uninterrupted run.

The corpus is three parallel shards (two gzipped) written into a temporary directory;
`data.stream: stream` reads it through tf.data and the trainer checkpoints the input
iterator next to the model (`checkpoints/data/worker-<k>/ckpt-<step>`). With dropout on
and op determinism, a resumed run must log the uninterrupted run's numbers bit for bit,
which only holds if the restored iterator continues at the exact next batch (its shuffle
state, partial buckets and file offsets included). Every resume here starts before the
end of epoch 0 and crosses it, so it also has to carry the epoch's example counts.
"""

import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(ROOT, "experiments", "copy_task.yaml")
STEPS = 24
EVERY = 6  # checkpoints at 6, 12, 18 and 24
AFTER = 12  # the checkpoint an interruption comes after (past step 10, before epoch 0 ends)
SIZES = (90, 60, 120)  # lines per shard
GZIPPED = (True, False, True)
# 96 tokens a batch: an epoch of this corpus is 18 one-batch steps. copy_task's 512 makes
# a shard complete no batch (test_a_shard_that_fills_no_batch_streams).
COMMON = [
    "data.stream=stream",
    "data.shuffle_buffer=200",
    "data.batch_size=96",
    "data.max_source_length=24",
    "data.max_target_length=24",
    "data.dev=null",  # no evaluation at the end: seconds saved on every run
    "data.test=null",
    f"training.train_steps={STEPS}",
    f"training.checkpoint_every={EVERY}",
    "training.log_every=5",
    "training.steps_per_execution=2",
    "training.deterministic=true",
    "model.dropout=0.1",
    "evaluation.every=0",
    "export.enabled=false",
]
EPOCH_LINE = re.compile(r"epoch \d+ of the streamed training data ended: .*$", re.MULTILINE)
pytestmark = pytest.mark.slow


# -- the corpus and the commands -------------------------------------------------------


def _write(path, lines, gz: bool) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def _corpus(directory, seed=0) -> list[str]:
    """Parallel shards (source letters -> reversed), some too long, some empty.

    Returns:
        The `--set` override that names them.
    """
    rng = random.Random(seed)
    for shard, (n, gz) in enumerate(zip(SIZES, GZIPPED)):
        src, tgt = [], []
        for i in range(n):
            length = rng.choice([1, 2, 3, 5, 8, 13, 30])  # 30 letters: over the limit
            word = "".join(rng.choice("abcdefgh") for _ in range(length))
            if i % 37 == 5:
                word = ""  # empty: dropped and counted as empty
            src.append(" ".join(word))
            tgt.append(" ".join(reversed(word)))
        ext = ".gz" if gz else ""
        _write(os.path.join(directory, f"part-{shard}.src{ext}"), src, gz)
        _write(os.path.join(directory, f"part-{shard}.tgt{ext}"), tgt, gz)
    src, tgt = os.path.join(directory, "part-*.src*"), os.path.join(directory, "part-*.tgt*")
    return ["data.train=" + json.dumps([{"type": "parallel", "source": src, "target": tgt}])]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    return _corpus(str(tmp_path_factory.mktemp("corpus")))


def _args(verb, run_dir, corpus, *extra) -> list[str]:
    args = [sys.executable, "-m", "kerastx", *verb, EXPERIMENT]
    for item in (f"run_dir={run_dir}", *corpus, *COMMON, *extra):
        args += ["--set", item]
    return args


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(run_dir, corpus, *extra, verb=("train",)) -> str:
    """Runs a command to a successful end; returns its output (stdout and stderr)."""
    proc = subprocess.run(
        _args(verb, run_dir, corpus, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def _start_and_wait(run_dir, corpus, until):
    """Starts `kerastx train` and returns the process once `until(run_dir)` is true."""
    proc = subprocess.Popen(
        _args(("train",), run_dir, corpus),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while not until(run_dir):
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("training did not reach the interruption point")
        time.sleep(0.02)
    return proc


def _log(run_dir) -> list[dict]:
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def _rows(records):
    keys = ("step", "loss", "grad_norm", "ids_hash", "tokens", "examples")
    return [tuple(r[k] for k in keys) for r in records]


def _last_step(run_dir) -> int:
    return max((r["step"] for r in _log(run_dir)), default=0)


def _newest_checkpoint(run_dir) -> int | None:
    """The step of the newest model checkpoint the state file lists."""
    path = os.path.join(run_dir, "checkpoints", "checkpoint")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        match = re.search(r'^model_checkpoint_path: ".*?ckpt-(\d+)"', f.read(), re.MULTILINE)
    return int(match.group(1)) if match else None


def _past(step: int, logged: int):
    """True once a checkpoint at `step` or later is listed and `logged` steps are done."""

    def check(run_dir):
        newest = _newest_checkpoint(run_dir)
        return newest is not None and newest >= step and _last_step(run_dir) >= logged

    return check


def _data_dir(run_dir, worker=0) -> str:
    return os.path.join(run_dir, "checkpoints", "data", f"worker-{worker}")


def _resumed(run_dir, step) -> str:
    path = os.path.join(run_dir, "checkpoints", f"ckpt-{step}")
    return f"resumed from {path} at step {step}"


def _epoch_lines(output) -> list[str]:
    return EPOCH_LINE.findall(output)


def _assert_resumed_exactly(run_dir, output, reference) -> None:
    """Every step once, with the uninterrupted run's numbers and epoch counts."""
    rows, reference_output, _ = reference
    records = _log(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert _rows(records) == rows
    # Part of epoch 0 was read before the interruption: its counts came back with it.
    assert _epoch_lines(output) == _epoch_lines(reference_output)


@pytest.fixture(scope="module")
def memory_report(corpus, tmp_path_factory) -> dict:
    """The in-memory path's counts of the same files (`report()["train"]`)."""
    from kerastx.config import load_experiment
    from kerastx.data import build_data

    run_dir = str(tmp_path_factory.mktemp("memory"))
    overrides = [f"run_dir={run_dir}", *corpus, *COMMON, "data.stream=memory"]
    cfg, _ = load_experiment([EXPERIMENT], overrides)
    data = build_data(cfg)
    assert not data.streamed
    return data.report()["train"]


@pytest.fixture(scope="module")
def reference(corpus, memory_report, tmp_path_factory):
    """The uninterrupted run: (its log rows, its output, its run dir)."""
    run_dir = str(tmp_path_factory.mktemp("reference") / "run")
    output = _run(run_dir, corpus)
    records = _log(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # One replica, one batch a step, and no batch spans two epochs: epoch 0 ends at the
    # step where the examples so far reach the corpus's kept examples, after the
    # checkpoint the interruptions come after (so every resume crosses it).
    kept = memory_report["examples"] - memory_report["dropped"] - memory_report["empty"]
    seen = [sum(r["examples"] for r in records[:i]) for i in range(1, STEPS + 1)]
    assert kept in seen, (kept, seen)
    assert AFTER + 2 < seen.index(kept) + 1 < STEPS, (kept, seen)
    return _rows(records), output, run_dir


# -- tests -----------------------------------------------------------------------------


def test_sigkill_and_rerun_gives_the_uninterrupted_losses(tmp_path, corpus, reference):
    run_dir = str(tmp_path / "run")
    proc = _start_and_wait(run_dir, corpus, _past(AFTER, AFTER + 2))
    proc.kill()
    proc.communicate()
    assert _last_step(run_dir) < STEPS
    restored = _newest_checkpoint(run_dir)
    assert os.path.exists(os.path.join(_data_dir(run_dir), f"ckpt-{restored}.index"))
    output = _run(run_dir, corpus)
    assert _resumed(run_dir, restored) in output
    _assert_resumed_exactly(run_dir, output, reference)


def test_sigterm_saves_exits_75_and_resumes_exactly(tmp_path, corpus, reference):
    run_dir = str(tmp_path / "run")
    proc = _start_and_wait(run_dir, corpus, _past(AFTER, AFTER + 1))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    stopped = _last_step(run_dir)
    assert stopped < STEPS
    assert f"preempted by SIGTERM; checkpoint saved at step {stopped}" in err
    # Saved where it stopped (off the checkpoint grid), its data position with it.
    assert _newest_checkpoint(run_dir) == stopped
    assert os.path.exists(os.path.join(_data_dir(run_dir), f"ckpt-{stopped}.index"))
    output = _run(run_dir, corpus)
    assert _resumed(run_dir, stopped) in output
    _assert_resumed_exactly(run_dir, output, reference)


def test_a_lost_or_damaged_data_position_falls_back_to_an_older_checkpoint(
    tmp_path, corpus, reference
):
    # The finished reference run, copied: its two newest data positions spoiled, the same
    # command restores the one before them (12) and trains 13-24 again.
    run_dir = str(tmp_path / "run")
    shutil.copytree(reference[2], run_dir)
    data = _data_dir(run_dir)
    lost, damaged = STEPS, STEPS - EVERY
    os.remove(os.path.join(data, f"ckpt-{lost}.index"))
    with open(os.path.join(data, f"ckpt-{damaged}.data-00000-of-00001"), "r+b") as f:
        flipped = bytes(b ^ 0xFF for b in f.read())
        f.seek(0)
        f.write(flipped)
    output = _run(run_dir, corpus)
    checkpoints = os.path.join(run_dir, "checkpoints")
    assert (
        f"checkpoint {checkpoints}/ckpt-{lost} cannot be restored (no saved data position "
        f"for step {lost} in {data} (the streamed input of this worker)); trying an older one"
    ) in output
    assert (
        f"checkpoint {checkpoints}/ckpt-{damaged} cannot be restored (data position unreadable ("
    ) in output
    assert f"restored {checkpoints}/ckpt-{AFTER}; skipped unreadable newer checkpoint(s)" in (
        output
    )
    assert _resumed(run_dir, AFTER) in output
    _assert_resumed_exactly(run_dir, output, reference)


def test_the_epoch_counts_equal_the_in_memory_report(reference, memory_report):
    want = memory_report
    assert want["examples"] == sum(SIZES)
    assert want["dropped"] > 0 and want["empty"] > 0 and want["truncated"] == 0
    assert _epoch_lines(reference[1]) == [
        f"epoch 0 of the streamed training data ended: {want['examples']} examples read, "
        f"{want['dropped']} dropped as too long, {want['empty']} empty dropped"
    ]


def test_two_local_workers_train_save_both_data_positions_and_resume(tmp_path, corpus):
    # Three shards over two workers: worker 0 reads two files, worker 1 one, each on half
    # the token budget (so their data positions differ).
    run_dir = str(tmp_path / "run")
    launch = ("launch", "--workers", "2")
    short = ["training.train_steps=4", "training.checkpoint_every=2"]
    output = _run(run_dir, corpus, *short, verb=launch)
    first = _log(run_dir)
    assert [r["step"] for r in first] == [1, 2, 3, 4], output[-3000:]
    for worker in (0, 1):
        names = sorted(os.listdir(_data_dir(run_dir, worker)))
        assert "ckpt-4.index" in names, (worker, names)
    # A normal end, then more steps: each worker restores its own data position.
    more = _run(run_dir, corpus, *short, "training.train_steps=6", verb=launch)
    assert _resumed(run_dir, 4) in more, more[-3000:]
    records = _log(run_dir)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[:4] == first
    # The stream went on where it stopped: a restarted one would repeat steps 1 and 2.
    hashes = [r["ids_hash"] for r in records]
    assert len(set(hashes)) == 6, hashes
    for worker in (0, 1):
        assert os.path.exists(os.path.join(_data_dir(run_dir, worker), "ckpt-6.index"))


def test_a_shard_that_fills_no_batch_streams(tmp_path):
    """Windows that complete no batch (every bucket below its capacity) pass their
    examples on: copy_task's 512-token budget, under which no shard of this corpus
    completes a batch alone; the epoch still holds every kept example once."""
    from kerastx.config import load_experiment
    from kerastx.data import build_data

    overrides = [f"run_dir={tmp_path / 'run'}", *_corpus(str(tmp_path)), *COMMON]
    cfg, _ = load_experiment([EXPERIMENT], [*overrides, "data.batch_size=512"])
    ids = []
    for batch in build_data(cfg).stream_dataset(1):
        if int(batch["epoch"]) > 0:
            break
        assert batch["source_ids"].shape[0] > 0
        ids += batch["example_id"].numpy().tolist()
    memory, _ = load_experiment(
        [EXPERIMENT], [*overrides, "data.stream=memory", f"run_dir={tmp_path / 'mem'}"]
    )
    kept = sum(len(c) for c in build_data(memory).train_corpora())
    assert len(ids) == len(set(ids)) == kept
