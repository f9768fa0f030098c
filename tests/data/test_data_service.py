"""Training from a tf.data service (kerastx.data.service), with real processes on
localhost: `kerastx data-service` (a dispatcher and its worker processes) feeds an
in-process Trainer whose losses equal the plain pipeline's bit for bit, also across a
resume; `--workers 2` (two dispatcher+worker pairs) feeds `kerastx launch --workers 2`,
one pair per input pipeline, with the plain launch's losses; a dispatcher with two
workers, an unreachable or a malformed address are one-line errors; a batch out of the
stream's order fails the read."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
import yaml

from kerastx.config import load_experiment
from kerastx.data import DataError, service
from kerastx.train.loop import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8

pytestmark = pytest.mark.slow
# `import kerastx` sets it in this process; unset, the CLI hides TensorFlow's start-up lines.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _start(*args):
    """`python -m kerastx data-service ARGS` (read its line with `_line`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kerastx", "data-service", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process


def _line(process, ready=r"kerastx data-service: (serving|worker) ") -> str:
    """The line a service process prints once it serves."""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if sel.select(timeout=120):
            line = process.stdout.readline()
            if re.match(ready, line):
                return line
    _stop(process)
    pytest.fail(f"{process.args} did not start: {process.stderr.read()[-2000:]}")


def _stop(process, sig=signal.SIGTERM) -> int:
    """Stops a service process (a second time: kills it); its return code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stdout.close()
    process.stderr.close()
    return process.returncode


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _gone(pids, wait: float = 20.0) -> bool:
    """True once none of `pids` runs; kills those left after `wait` s."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not [p for p in pids if os.path.exists(f"/proc/{p}")]:
            return True
        time.sleep(0.2)
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return False


def _address(line: str) -> str:
    return re.search(r"grpc://[\w.-]+:\d+", line).group(0)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small parallel shards (copy-reversed letter strings)."""
    root = tmp_path_factory.mktemp("service_corpus")
    rng = random.Random(0)
    for shard, n in enumerate((230, 170, 301)):
        src = [
            " ".join(rng.choice("abcdefgh") for _ in range(rng.choice([1, 2, 3, 5, 8, 13])))
            for _ in range(n)
        ]
        (root / f"part-{shard}.src").write_text("".join(s + "\n" for s in src))
        tgt = "".join(" ".join(reversed(s.split())) + "\n" for s in src)
        (root / f"part-{shard}.tgt").write_text(tgt)
    return root


def _experiment(corpus, tmp_path, name: str, address=None, steps: int = STEPS) -> str:
    """The experiment YAML's path."""
    doc = {
        "name": name,
        "run_dir": str(tmp_path / name),
        "seed": 1,
        "model": {
            "type": "seq2seq",
            "d_model": 16,
            "num_heads": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "ffn_dim": 32,
            "dropout": 0.0,
            "max_length": 32,
        },
        "training": {
            "train_steps": steps,
            "log_every": 1,
            "steps_per_execution": 2,
            "warmup_steps": 2,
            "checkpoint_every": 4,
            "deterministic": True,
        },
        "evaluation": {"every": 0},
        "export": {"enabled": False},
        "data": {
            "data_dir": str(tmp_path / "data"),
            "train": [
                {
                    "type": "parallel",
                    "source": str(corpus / "part-*.src"),
                    "target": str(corpus / "part-*.tgt"),
                }
            ],
            "dev": None,
            "test": None,
            "service": address,
            "source_tokenizer": {"type": "symbols"},
            "target_tokenizer": {"type": "symbols"},
            "shared_vocab": True,
            "max_source_length": 24,
            "max_target_length": 24,
            "batch_size": 96,
            "bucket_width": 4,
            "shuffle_buffer": 150,
            "stream": "stream",
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def _cfg(corpus, tmp_path, name: str, address=None, steps: int = STEPS):
    cfg, _ = load_experiment([_experiment(corpus, tmp_path, name, address, steps)])
    return cfg


def _records(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [r for r in (json.loads(line) for line in f if line.strip()) if "loss" in r]


def _losses(cfg) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in _records(cfg.run_dir)]


def test_losses_equal_the_plain_pipeline_across_a_resume(corpus, tmp_path):
    """A dispatcher process with its worker process (`--worker`); the trainer trains 4
    steps from the service, stops, and resumes to 8: the losses of the plain run."""
    dispatcher = _start("--port", "0", "--workers", "1")  # starts while the plain run trains
    workers = []
    try:
        plain = _cfg(corpus, tmp_path, "plain")
        Trainer(plain, progress=False).run()
        want = _losses(plain)
        assert [s for s, _ in want] == list(range(1, STEPS + 1))
        address = _address(_line(dispatcher))
        workers = _children(dispatcher.pid)
        assert len(workers) == 1
        assert service.count_workers(address) == 1
        Trainer(_cfg(corpus, tmp_path, "svc", address, steps=4), progress=False).run()
        saved = tmp_path / "svc" / "checkpoints" / "data" / "worker-0"
        assert (saved / "ckpt-4.index").exists()  # the position, saved another way
        resumed = Trainer(_cfg(corpus, tmp_path, "svc", address), progress=False)
        resumed.run()
        assert resumed.restored_from.endswith("ckpt-4")
        got = _losses(resumed.cfg)
    finally:
        code = _stop(dispatcher)
        stopped = _gone(workers)
    assert got == want  # bit for bit: floats from JSON, compared exactly
    assert code == 0 and stopped  # SIGTERM is a clean stop, its worker stopped with it


def _launch(experiment: str, *overrides: str) -> str:
    """`python -m kerastx launch --workers 2 EXPERIMENT --set ...` to a successful end."""
    args = [sys.executable, "-m", "kerastx", "launch", "--workers", "2", experiment]
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.run(
        args,
        cwd=ROOT,
        env={**ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_two_pairs_feed_two_trainer_workers_with_the_plain_losses(corpus, tmp_path):
    """`--workers 2`: two dispatchers with one worker each; `launch --workers 2` with
    both addresses reads input pipeline p from pair p: the plain launch's numbers."""
    steps = 4
    pairs = _start("--port", "0", "--workers", "2")  # starts while the plain run trains
    workers = []
    try:
        plain = _experiment(corpus, tmp_path, "plain2", steps=steps)
        _launch(plain, "training.checkpoint_every=2")
        want = _records(str(tmp_path / "plain2"))
        assert [r["step"] for r in want] == list(range(1, steps + 1))
        line = _line(pairs)
        value = re.search(r"set data\.service=(\S+);", line).group(1)
        addresses = value.split(",")
        assert len(addresses) == 2 and len(set(addresses)) == 2
        assert line.startswith(f"kerastx data-service: serving {', '.join(addresses)} (")
        workers = _children(pairs.pid)
        assert len(workers) == 2
        assert [service.count_workers(a) for a in addresses] == [1, 1]
        svc = _experiment(corpus, tmp_path, "svc2", steps=steps)
        output = _launch(svc, "training.checkpoint_every=2", f"data.service={value}")
        got = _records(str(tmp_path / "svc2"))
    finally:
        code = _stop(pairs)
        stopped = _gone(workers)
    for pipe, address in enumerate(addresses):  # trainer worker p read from pair p
        used = rf"\[worker {pipe}\] .*training input from the tf\.data service at (\S+) "
        assert re.findall(used, output) == [address], output[-3000:]
    keys = ("step", "loss", "ids_hash")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in want]
    assert code == 0 and stopped


def test_a_dispatcher_with_two_workers_is_refused(corpus, tmp_path):
    """A second worker joins a dispatcher: every job would run on both (each batch twice)."""
    dispatcher = _start("--port", "0", "--workers", "1")
    extra = None
    workers = []
    try:
        address = _address(_line(dispatcher))
        workers = _children(dispatcher.pid)
        extra = _start("--worker", "--dispatcher", address)
        _line(extra)
        assert service.count_workers(address) == 2
        with pytest.raises(DataError) as err:
            Trainer(_cfg(corpus, tmp_path, "two", address), progress=False).run()
    finally:
        extra_code = _stop(extra) if extra is not None else None
        code = _stop(dispatcher, signal.SIGINT)  # Ctrl-C: the same clean stop
        stopped = _gone(workers)
    message = str(err.value)
    assert "\n" not in message and address in message
    assert "has 2 workers" in message and "--workers 1" in message
    assert code == 0 and extra_code == 0 and stopped


def test_pairs_are_addresses_in_pipeline_order():
    value = "grpc://a:5000, grpc://b:5001"
    assert service.addresses(value) == ["grpc://a:5000", "grpc://b:5001"]
    assert [service.address_for(value, p) for p in range(3)] == [
        "grpc://a:5000",
        "grpc://b:5001",
        "grpc://a:5000",
    ]
    assert service.address_for("grpc://a:5000", 1) == "grpc://a:5000"


def test_an_unreachable_dispatcher_is_one_line_naming_it(corpus, tmp_path):
    address = f"grpc://localhost:{_refused_port()}"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        Trainer(_cfg(corpus, tmp_path, "gone", address), progress=False).run()
    message = str(err.value)
    assert "\n" not in message
    assert f"no tf.data service dispatcher at {address}" in message
    assert "kerastx data-service --port" in message
    assert time.monotonic() - start < 60  # no waiting on an address nobody serves


def test_no_worker_or_no_dispatcher_behind_the_port_is_one_line_after_a_timeout():
    d, _ = _servers(0)
    try:
        with pytest.raises(DataError) as err:
            service.distribute(tf.data.Dataset.range(1), d.target, "job", timeout=2)
    finally:
        d.stop()
    assert str(err.value) == (
        f"data.service: the tf.data service dispatcher at {d.target} has no working worker "
        f"(none answered within 2 s); start one with `kerastx data-service --worker "
        f"--dispatcher {d.target}`"
    )
    with socket.socket() as listener:  # accepts connections, answers nothing
        listener.bind(("localhost", 0))
        listener.listen(4)
        address = f"grpc://localhost:{listener.getsockname()[1]}"
        with pytest.raises(DataError) as err:
            service.distribute(tf.data.Dataset.range(1), address, "job", timeout=2)
    assert str(err.value).startswith(
        f"data.service: {address} accepts connections but no tf.data service dispatcher "
        f"answers there (no answer within 2 s); start one with `kerastx data-service --port"
    )


@pytest.mark.parametrize("address", ["localhost:5000", "grpc://localhost", "grpc://h:70000"])
def test_a_malformed_address_is_one_line(address):
    with pytest.raises(DataError) as err:
        service.distribute(tf.data.Dataset.range(1), address, "job")
    assert str(err.value) == (
        f"data.service: '{address}' is not a tf.data service address; expected "
        f"grpc://HOST:PORT (port 1-65535), as `kerastx data-service` prints it"
    )


def test_a_worker_of_an_unreachable_dispatcher_exits_2_with_one_line():
    address = f"grpc://localhost:{_refused_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "kerastx", "data-service", "--worker", "--dispatcher", address],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"kerastx data-service: error: --dispatcher: no tf.data service dispatcher at "
        f"{address} (Connection refused); start one with `kerastx data-service --port "
        f"{address.rsplit(':', 1)[1]}`"
    ]


def _numbered(epochs: int = 1000, per_epoch: int = 5) -> tf.data.Dataset:
    """Batches numbered as the stream numbers them: (epoch, index in the epoch)."""
    return tf.data.Dataset.range(epochs).flat_map(
        lambda e: tf.data.Dataset.range(per_epoch).map(lambda i: {"epoch": e, "index": i})
    )


def _servers(workers: int):
    d = tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=0)
    )
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=d.target[len("grpc://") :]
    )
    return d, [tf.data.experimental.service.WorkerServer(config) for _ in range(workers)]


def test_the_position_is_checkpointed_and_resumes_exactly(tmp_path):
    """TensorFlow cannot save a service iterator; the ServiceIterator saves its position
    and a new one, restored, continues at the next batch."""
    d, workers = _servers(1)
    try:
        stream = service.ServiceStream(_numbered(), d.target, "position")
        raw = iter(
            _numbered().apply(
                tf.data.experimental.service.distribute(
                    tf.data.experimental.service.ShardingPolicy.OFF, d.target
                )
            )
        )
        next(raw)
        with pytest.raises(tf.errors.UnimplementedError, match="SaveInternal"):
            tf.train.Checkpoint(iterator=raw).write(str(tmp_path / "raw"))
        first = iter(stream)
        seen = [(int(b["epoch"]), int(b["index"])) for b in (first.get_next() for _ in range(12))]
        assert seen == [(e, i) for e in range(3) for i in range(5)][:12]
        path = tf.train.Checkpoint(iterator=first).write(str(tmp_path / "position"))
        again = iter(service.ServiceStream(_numbered(), d.target, "position-resumed"))
        tf.train.Checkpoint(iterator=again).read(path).assert_consumed()
        assert int(again.consumed.numpy()) == 12
        batch = again.get_next()
        assert (int(batch["epoch"]), int(batch["index"])) == (2, 2)
    finally:
        for server in [*workers, d]:
            server.stop()


def test_a_batch_out_of_order_fails_the_read():
    """Two workers behind `distribute`'s back (one joined later): repeated batches."""
    d, workers = _servers(2)
    try:
        iterator = iter(service.ServiceStream(_numbered(), d.target, "twice"))
        with pytest.raises(tf.errors.InvalidArgumentError, match="out of the stream's order"):
            for _ in range(200):
                iterator.get_next()
    finally:
        for server in [*workers, d]:
            server.stop()
