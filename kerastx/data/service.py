"""Training input from a tf.data service: the stream read and batched by another process.

`data.service: grpc://host:port` names a tf.data service dispatcher (started by
`kerastx data-service`); each trainer input pipeline then sends its graph (the streamed
epochs of `kerastx.data.stream`) to the service as a job of its own, the service's
worker reads the files, tokenizes and batches, and the trainer receives the finished
per-replica batches (`tf.data.experimental.service.distribute`).

Processing mode: `ShardingPolicy.OFF`, from a dispatcher with exactly one worker. An
epoch of the stream is one sequential computation (a scan over the epoch's windows
carries unfilled buckets and counts from window to window), so only one worker can make
its batches in order. Measured on TF 2.21, localhost, against the plain pipeline (a
toy stream of numbered elements, 3 epochs x 20, with 1 or 2 workers):
- OFF, 1 worker: 60 of 60, in order. The real stream of a 200k-pair corpus in 8 gzip
  shards, worker in its own process: 3000 batches (8 epochs) equal to the plain ones.
- OFF, 2 workers: 120 received, 60 distinct: every job runs on every worker, so each
  batch comes twice, interleaved as they arrive.
- DYNAMIC, 2 workers: 60 of 60 once, reordered: the splits are whole epochs (the
  stream's first source is its range of epochs), the workers make epochs 0 and 1 at
  once and the trainer gets them mixed; putting them back needs up to an epoch of
  batches in memory per extra worker.
- DATA (static), 2 workers: 60 of 60 once, reordered (0, 2, 4, 1, 6, ...); each worker
  computes the whole stream to keep every second batch (there is no file-name source
  for FILE sharding to split), and the reads follow arrival.
- DATA with coordinated reads (num_consumers=1), 2 workers: strict rounds, the two
  workers swapped (1, 0, 3, 2, ...): sortable in groups of 2, but every worker still
  computes the whole stream, so 2 workers cost twice the CPU of one for its throughput.
- OFF with coordinated reads, 2 workers: 0, 0, 1, 1, ... (each worker's copy in turn).
So a dispatcher serves kerastx trainers with one worker, and `distribute` refuses
another number of workers (it counts them with a probe job of one element, which each
worker sends once). In the graph, each batch received must follow the one before
((epoch, index + 1) or (epoch + 1, 0)): a worker that joins or restarts later fails the
step instead of training on repeated batches.

Layout: one dispatcher+worker pair per trainer input pipeline. More service workers do
not split one stream (above: they repeat it, reorder it, or each compute all of it);
what they can split is the input pipelines of multi-worker training, each an
independent sequential stream (its own files and token budget). `data.service` names
one address or several, comma-separated; input pipeline p (trainer worker p) reads from
address p % count. `kerastx data-service --workers N` starts N pairs, dispatchers on
ports P, P+1, ... (each with its worker on a free port, or `--worker-port-base` + i),
and prints the value to set, in the order the pipelines use it. With one address for
several pipelines, its one worker runs every pipeline's job (one job each, in turn).

Cost, same corpus, everything on one shared 2-core machine (worker and trainer compete
for the cores, so this is the transfer's overhead, not the gain of a worker machine):
180 batches/s read in the trainer's process, 148 batches/s through the service; the
probe at start about 2-3 s.

Resume: TensorFlow cannot checkpoint a service iterator (`tf.train.Checkpoint(
iterator=...).write` raises `UnimplementedError: SaveInternal is not yet supported`).
So the trainer's iterator here is a `ServiceIterator`, a trackable object whose state
is the position: batches consumed, and the (epoch, index) of the last one. The trainer
saves and restores it where it saves the plain iterator (`StreamInput`). On resume the
job opens (lazily, after the restore) on the stream with the consumed batches skipped
on the worker (`dataset.skip(consumed)`), and its first batch must follow the saved
(epoch, index): the resumed stream is the plain one, or the step fails. The skip
recomputes the skipped batches, so a resume costs the time to read the stream up to
the position again (measured: the first batch 7.9 s after a resume at batch 1500, 3.7
epochs, of the corpus above; 1.3 s at batch 0).

No dispatcher `work_dir` (fault tolerance): the worker's positions in its jobs are not
journaled either, and the exact recovery is the trainer's: restarted, it resumes from
its checkpoint with a new job. Job names carry the run directory's hash, the input
pipeline and a random part, so no two trainings, nor two starts of one, share a job.

A worker must reach the training files and the run's vocabulary files under the same
paths as the trainer (the dataset graph names them), and have `tensorflow_text`'s ops
(the tokenizers): `kerastx data-service --worker` imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import tensorflow as tf

from kerastx.data.errors import DataError
from kerastx.errors import KerastxError

log = logging.getLogger("kerastx")

SCHEME = "grpc://"
TIMEOUT_S = 30.0  # how long a dispatcher (and its worker) may take to answer a probe
_ADDRESS_RE = re.compile(r"grpc://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_OFF = tf.data.experimental.service.ShardingPolicy.OFF


# Set by `serve` for the worker processes it starts: its pid.
_PARENT_ENV = "KERASTX_DATA_SERVICE_PARENT"


class ServiceError(KerastxError):
    """`kerastx data-service` cannot serve (a port in use, a worker that exited)."""


# -- addresses and probes --------------------------------------------------------------


ORDER_MARK = "kerastx-service-order:"


def error_from(err: BaseException):
    """The one-line DataError of the order check (see `ServiceIterator.get_next`), or None."""
    message = getattr(err, "message", None) or str(err)
    at = message.find(ORDER_MARK)
    if at < 0:
        return None
    text = " ".join(message[at + len(ORDER_MARK) :].split())
    text = text.replace("] [", " ").replace("[", "").replace("]", "").strip(" '\"")
    return DataError(text[:400])


def parse_address(address: str, key: str = "data.service") -> tuple[str, int]:
    """`grpc://host:port` -> (host, port).

    Raises:
        DataError: not of that form, or a port outside 1..65535.
    """
    match = _ADDRESS_RE.fullmatch(str(address).strip())
    port = int(match.group(2)) if match else 0
    if match is None or not 0 < port < 65536:
        raise DataError(
            f"{key}: '{address}' is not a tf.data service address; expected "
            f"grpc://HOST:PORT (port 1-65535), as `kerastx data-service` prints it"
        )
    return match.group(1).strip("[]"), port


def addresses(value: str) -> list[str]:
    """`data.service`'s value -> its addresses (one, or several separated by commas)."""
    return [part.strip() for part in str(value).split(",") if part.strip()]


def address_for(value: str, pipe: int) -> str:
    """The dispatcher of input pipeline `pipe`: address `pipe` % count of `value`."""
    parts = addresses(value) or [str(value)]  # an empty value: parse_address names it
    return parts[pipe % len(parts)]


def job_name(run_dir: str, pipe: int) -> str:
    """A job name of its own for one start of one trainer input pipeline."""
    run = hashlib.sha1(os.path.realpath(run_dir).encode("utf-8")).hexdigest()[:12]
    return f"kerastx-{run}-pipe{pipe}-{uuid.uuid4().hex[:12]}"


def _probe() -> tf.data.Dataset:
    """One element: under OFF, each worker of a job sends it once."""
    return tf.data.Dataset.range(1)


def _in_thread(fn, timeout: float):
    """`fn()` in a daemon thread: (done, result or the exception). A call that never
    returns (tf.data service retries an unanswered address without end) is left
    running; the thread does not keep the process alive."""
    out: dict = {}

    def call():
        try:
            out["value"] = fn()
        except Exception as err:  # handed to the caller, which names it
            out["error"] = err

    thread = threading.Thread(target=call, daemon=True, name="kerastx-service-probe")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None
    if "error" in out:
        return True, out["error"]
    return True, out["value"]


def check_dispatcher(address: str, key: str = "data.service", timeout: float = TIMEOUT_S):
    """The id of a one-element dataset registered with the dispatcher at `address`.

    Raises:
        DataError: malformed address; nothing listens there; or what listens is no
            tf.data service dispatcher (no answer within `timeout` s).
    """
    host, port = parse_address(address, key)
    hint = f"start one with `kerastx data-service --port {port}`"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise DataError(
            f"{key}: no tf.data service dispatcher at {address} ({reason}); {hint}"
        ) from None
    done, dataset_id = _in_thread(
        lambda: tf.data.experimental.service.register_dataset(address, _probe()), timeout
    )
    if not done or isinstance(dataset_id, Exception):
        why = f"no answer within {timeout:g} s" if not done else _first_line(dataset_id)
        raise DataError(
            f"{key}: {address} accepts connections but no tf.data service dispatcher "
            f"answers there ({why}); {hint}"
        )
    return dataset_id


def count_workers(address: str, timeout: float = TIMEOUT_S) -> int:
    """The workers of a dispatcher: a one-element job under OFF gives one per worker.

    Raises:
        DataError: see `check_dispatcher`; or no worker answers within `timeout` s.
    """
    dataset_id = check_dispatcher(address, timeout=timeout)

    def read():
        dataset = tf.data.experimental.service.from_dataset_id(
            _OFF,
            address,
            dataset_id,
            _probe().element_spec,
            job_name=f"kerastx-probe-{uuid.uuid4().hex}",
        )
        return sum(1 for _ in dataset)

    done, count = _in_thread(read, timeout)
    if not done or isinstance(count, Exception):
        why = f"none answered within {timeout:g} s" if not done else _first_line(count)
        raise DataError(
            f"data.service: the tf.data service dispatcher at {address} has no working "
            f"worker ({why}); start one with `kerastx data-service --worker --dispatcher "
            f"{address}`"
        )
    return count


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


# -- the trainer's side ----------------------------------------------------------------


def distribute(
    dataset: tf.data.Dataset, address: str, job: str, timeout: float = TIMEOUT_S
) -> ServiceStream:
    """This input pipeline's stream, read by the tf.data service at `address`.

    Args:
        dataset: tf.data.Dataset. The plain pipeline (infinite, batches with `epoch`
            and `index`).
        address: str. `grpc://host:port` of the dispatcher.
        job: str. The job name (`job_name`): one per start of one input pipeline.
        timeout: float. Seconds the dispatcher and its worker may take to answer.

    Returns:
        ServiceStream: `iter()` gives a `ServiceIterator` (checkpointable position).

    Raises:
        DataError: see `count_workers`; or a number of workers other than one.
    """
    workers = count_workers(address, timeout)
    if workers != 1:
        raise DataError(
            f"data.service: the tf.data service at {address} has {workers} workers; the "
            f"training stream is read from exactly one (the service gives every job to "
            f"every worker, so each batch would come {workers} times); serve one worker "
            f"per dispatcher: `kerastx data-service --workers 1`, or `--workers N` for N "
            f"dispatcher+worker pairs, one per input pipeline"
        )
    log.info("training input from the tf.data service at %s (job %s)", address, job)
    return ServiceStream(dataset, address, job)


class ServiceStream:
    """The service's stream of one input pipeline; `iter()` gives a new position.

    Args:
        dataset: tf.data.Dataset. The plain pipeline.
        address: str. The dispatcher.
        job: str. The job name.
    """

    def __init__(self, dataset: tf.data.Dataset, address: str, job: str):
        self.dataset = dataset
        self.address = address
        self.job = job
        self.element_spec = dataset.element_spec  # the service sends the same batches

    def __iter__(self) -> ServiceIterator:
        return ServiceIterator(self)


class _Reader:
    """What a ServiceIterator holds but must not checkpoint (a plain object, so
    TensorFlow's tracking does not follow it): the stream and the opened iterator."""

    def __init__(self, stream: ServiceStream):
        self.stream = stream
        self.iterator = None


class ServiceIterator(tf.Module):
    """`get_next()` gives the next batch from the service; the position is checkpointed.

    The job opens on the first `get_next()` (eager or traced; opened eagerly either
    way), so that a position restored before starts it there.

    Args:
        stream: ServiceStream.
    """

    def __init__(self, stream: ServiceStream):
        super().__init__(name="service_iterator")
        self._reader = _Reader(stream)
        self.consumed = tf.Variable(0, dtype=tf.int64, trainable=False, name="consumed")
        # The (epoch, index) of the last batch; the first one must be (0, 0).
        self.last_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="last_epoch")
        self.last_index = tf.Variable(-1, dtype=tf.int64, trainable=False, name="last_index")

    def _opened(self):
        reader = self._reader
        if reader.iterator is None:
            with tf.init_scope(), tf.device("/cpu:0"):
                skip = int(self.consumed.numpy())
                dataset = reader.stream.dataset.skip(skip) if skip else reader.stream.dataset
                dataset = dataset.apply(
                    tf.data.experimental.service.distribute(
                        _OFF, reader.stream.address, job_name=reader.stream.job
                    )
                )
                reader.iterator = iter(dataset)
            if skip:
                log.info("the tf.data service skips the %d batches this run consumed before", skip)
        return reader.iterator

    def get_next(self):
        batch = self._opened().get_next()
        epoch = tf.cast(batch["epoch"], tf.int64)
        index = tf.cast(batch["index"], tf.int64)
        last_epoch = self.last_epoch.read_value()
        last_index = self.last_index.read_value()
        follows = (tf.equal(epoch, last_epoch) & tf.equal(index, last_index + 1)) | (
            tf.equal(epoch, last_epoch + 1) & tf.equal(index, 0)
        )
        check = tf.debugging.Assert(
            follows,
            [
                tf.constant(
                    f"{ORDER_MARK} the tf.data service at {self._reader.stream.address} sent "
                    f"a batch out of the stream's order (a second worker, or a worker "
                    f"restarted; serve one worker and resume): last (epoch, index), then the "
                    f"one received:"
                ),
                last_epoch,
                last_index,
                epoch,
                index,
            ],
        )
        with tf.control_dependencies([check]):
            updates = [
                self.consumed.assign_add(1),
                self.last_epoch.assign(epoch),
                self.last_index.assign(index),
            ]
        with tf.control_dependencies(updates):
            return tf.nest.map_structure(tf.identity, batch)

    def __next__(self):
        return self.get_next()

    def __iter__(self):
        return self


# -- `kerastx data-service` ------------------------------------------------------------


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _check_port(port: int, flag: str) -> None:
    if not 0 <= port < 65536:
        raise ServiceError(f"{flag}: {port} is not a port (0-65535; 0 = any free port)")


@contextlib.contextmanager
def _until_stopped():
    """An event set by SIGTERM or SIGINT (Ctrl-C); the previous handlers come back after.
    Outside the main thread (no signals there) the event is only set by the caller."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_worker_process(address: str, host: str, port: int, verbose: bool):
    command = [sys.executable, "-m", "kerastx", "data-service", "--worker"]
    command += ["--dispatcher", address, "--host", host, "--port", str(port)]
    if verbose:
        command.append("--verbose")
    env = dict(os.environ)
    if env.get("TF_CPP_MIN_LOG_LEVEL") == ("0" if verbose else "3"):
        # The value kerastx's CLI sets (or the same): left to the child's CLI, which then
        # also hides TensorFlow's start-up lines (an inherited value means "the user's").
        env.pop("TF_CPP_MIN_LOG_LEVEL")
    env[_PARENT_ENV] = str(os.getpid())  # the worker stops when this process is gone
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def _stop_processes(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_for_workers(started, stop: threading.Event) -> None:
    """Until every worker started here printed its line (a WorkerServer has registered
    with the dispatcher when it exists), or exited. `started`: (dispatcher, process)."""
    deadline = time.monotonic() + 120.0  # a worker process imports TensorFlow first
    with selectors.DefaultSelector() as waiting:
        for address, process in started:
            waiting.register(process.stdout, selectors.EVENT_READ, (address, process))
        while waiting.get_map() and not stop.is_set():
            if time.monotonic() > deadline:
                left = ", ".join(address for address, _ in started)
                raise ServiceError(f"the workers of {left} did not start within 120 s")
            for key, _ in waiting.select(timeout=0.5):
                address, process = key.data
                if not process.stdout.readline():
                    code = process.wait()
                    raise ServiceError(
                        f"a worker exited with code {code} before serving (run `kerastx "
                        f"data-service --worker --dispatcher {address}` to see why)"
                    )
                waiting.unregister(process.stdout)


def _start_dispatcher(port: int, flag_port: int):
    try:
        return tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=port)
        )
    except (RuntimeError, tf.errors.OpError) as err:
        where = "there" if port == flag_port else f"on {port}"
        raise ServiceError(
            f"--port {flag_port}: cannot serve {where} ({_first_line(err)})"
        ) from None


def _serving_line(host: str, addresses: list[str], ports: list[int]) -> str:
    """The line `serve` prints: the addresses in the order input pipelines use them."""
    if len(addresses) == 1:
        where = ", ".join(f"{host}:{p}" for p in ports) or "none yet"
        noun = "worker" if len(ports) == 1 else "workers"
        what = f"dispatcher; {len(ports)} {noun}: {where}"
    else:
        where = ", ".join(f"{host}:{p}" for p in ports)
        what = f"{len(addresses)} dispatchers, one worker each: {where}"
    return (
        f"kerastx data-service: serving {', '.join(addresses)} ({what}); set "
        f"data.service={','.join(addresses)}; Ctrl-C or SIGTERM stops it"
    )


def serve(
    port: int,
    host: str = "localhost",
    workers: int = 1,
    worker_port_base: int = 0,
    verbose: bool = False,
) -> int:
    """Runs `workers` dispatcher+worker pairs until SIGTERM or Ctrl-C.

    A kerastx trainer reads from a dispatcher with exactly one worker, so N workers are
    N dispatchers, one per trainer input pipeline (see the module docstring). Prints
    one line, `kerastx data-service: serving ADDRESSES (...); set data.service=VALUE;
    ...`, once every worker serves. Returns 0 when stopped.

    Args:
        port: int. The first dispatcher's port; dispatcher i serves on this port + i
            (0: free ports).
        host: str. The name the workers and trainers reach this machine by.
        workers: int. Dispatcher+worker pairs to start here (0: one dispatcher whose
            worker is left to a `--worker` process).
        worker_port_base: int. Worker i listens on this port + i (0: free ports).
        verbose: bool. The workers show TensorFlow's native log lines.

    Raises:
        ServiceError: a port out of range or in use; a worker that exits.
    """
    _check_port(port, "--port")
    _check_port(worker_port_base, "--worker-port-base")
    if workers < 0:
        raise ServiceError(f"--workers: {workers}; expected 0 or more")
    pairs = max(workers, 1)
    if port and port + pairs - 1 > 65535:
        raise ServiceError(
            f"--port {port}: {pairs} dispatchers need ports up to {port + pairs - 1}"
        )
    dispatchers, processes = [], []
    with _until_stopped() as stop:
        try:
            for i in range(pairs):  # one at a time, so a failed start still stops the others
                dispatchers.append(_start_dispatcher(port + i if port else 0, port))
            addresses = [f"{SCHEME}{host}:{d.target.rsplit(':', 1)[1]}" for d in dispatchers]
            ports = [
                worker_port_base + i if worker_port_base else _free_port() for i in range(workers)
            ]
            for address, p in zip(addresses, ports):
                processes.append(_start_worker_process(address, host, p, verbose))
            _wait_for_workers(list(zip(addresses, processes)), stop)
            if stop.is_set():
                return 0
            print(_serving_line(host, addresses, ports), flush=True)
            while not stop.wait(0.5):
                for p, process in zip(ports, processes):
                    if process.poll() is not None:
                        raise ServiceError(
                            f"the worker on port {p} exited with code {process.returncode}"
                        )
        finally:
            _stop_processes(processes)
            for dispatcher in dispatchers:
                dispatcher.stop()
    return 0


def serve_worker(dispatcher: str, port: int = 0, host: str = "localhost") -> int:
    """Runs one worker of the dispatcher at `dispatcher` until SIGTERM or Ctrl-C.

    Args:
        dispatcher: str. `grpc://host:port`.
        port: int. This worker's port (0: a free one).
        host: str. The name trainers reach this worker by.

    Raises:
        DataError: a malformed or unreachable dispatcher address.
        ServiceError: a port out of range or in use.
    """
    import tensorflow_text  # noqa: F401 (registers the ops of the stream's tokenizers)

    _check_port(port, "--port")
    check_dispatcher(dispatcher, "--dispatcher")
    d_host, d_port = parse_address(dispatcher, "--dispatcher")
    port = port or _free_port()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{d_host}:{d_port}", worker_address=f"{host}:{port}", port=port
    )
    with _until_stopped() as stop:
        try:
            worker = tf.data.experimental.service.WorkerServer(config)
        except (RuntimeError, tf.errors.OpError) as err:
            raise ServiceError(f"--port {port}: cannot serve there ({_first_line(err)})") from None
        print(f"kerastx data-service: worker {host}:{port} of {dispatcher}", flush=True)
        parent = int(os.environ.get(_PARENT_ENV, 0))
        # A worker started by `serve` stops with it, even when it was killed (the
        # worker is then the child of another process).
        while not stop.wait(1.0) and not (parent and os.getppid() != parent):
            pass
        worker.stop()
    return 0


def run(
    worker: bool,
    port: int,
    host: str = "localhost",
    workers: int = 1,
    worker_port_base: int = 0,
    dispatcher: str | None = None,
    verbose: bool = False,
) -> int:
    """`kerastx data-service`: a dispatcher with workers, or (`worker`) one worker."""
    if worker:
        if not dispatcher:
            raise ServiceError("--worker needs --dispatcher grpc://HOST:PORT")
        return serve_worker(dispatcher, port, host)
    if dispatcher:
        raise ServiceError("--dispatcher is for --worker; a dispatcher serves on --port")
    return serve(port, host, workers, worker_port_base, verbose)
