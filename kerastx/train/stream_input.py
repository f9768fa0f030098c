"""The training input of streamed corpora: a host iterator whose state is checkpointed.

A streamed epoch has no plan to restart from (the order comes from the files, the
shuffle buffer and the buckets as they fill), so exact resume saves the tf.data
iterator itself (`tf.train.Checkpoint(iterator=...)`: file offsets, the shuffle buffer,
partial buckets, prefetched batches). `strategy.distribute_datasets_from_function`
gives an iterator TensorFlow cannot checkpoint (its multi-device prefetching is not
trackable), so each worker keeps one plain iterator over its own pipeline's per-replica
batches and deals them to its local replicas in the step
(`experimental_distribute_values_from_function`), in the order the distributed
iterator would: flat batch i of the pipeline goes to local replica i % L.

Every worker saves its own iterator (its pipeline's state differs), before the model
checkpoint of the same step, to `checkpoints/data/worker-<k>/ckpt-<step>`; the
checkpoint files are written under a temporary name and renamed, so a data state is
whole or absent. A model checkpoint whose data state is missing or unreadable is
skipped on resume for the next older one (`UnreadableCheckpointError`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re

import tensorflow as tf

from kerastx.config.rundir import CHECKPOINT_DIR
from kerastx.data import service
from kerastx.train.checkpoints import UnreadableCheckpointError
from kerastx.train.strategy import worker_index

DATA_DIR = "data"


def num_workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))


class HostIterator:
    """`next()` gives one step's per-replica batch from a plain, checkpointable iterator.

    Args:
        dataset: tf.data.Dataset of this worker's per-replica batches.
        strategy: the tf.distribute strategy.
        local_replicas: int. Replicas of this worker.
    """

    element_spec = None  # not a distributed iterator: see `local_spec` and `deal`

    def __init__(self, dataset: tf.data.Dataset, strategy, local_replicas: int):
        self.iterator = iter(dataset)
        self.strategy = strategy
        self.local = local_replicas
        # One replica's batch with every dimension free: the input signature of the
        # step's probe, so it is traced once whatever shapes come first (a graph traced
        # for other shapes may differ in the last bit, which broke bit-exact resume).
        self.local_spec = tf.nest.map_structure(
            lambda s: tf.TensorSpec([None] * s.shape.rank, s.dtype), dataset.element_spec
        )

    def fetch_local(self) -> tuple:
        """The next per-replica batches of this worker (eagerly), one per local replica."""
        return tuple(self.iterator.get_next() for _ in range(self.local))

    def deal(self, batches: tuple):
        """The local replicas' batches as one distributed value (replica r gets r)."""
        if self.strategy.num_replicas_in_sync == 1:
            return batches[0]
        local = self.local
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: batches[ctx.replica_id_in_sync_group % local]
        )

    def get_next(self):
        return self.deal(self.fetch_local())

    def __next__(self):
        return self.get_next()

    def __iter__(self):
        return self


class StreamInput:
    """This worker's streamed input and its saved states.

    Args:
        data: DataModule with `streamed` True.
        strategy: the tf.distribute strategy.
        run_dir: str.
    """

    def __init__(self, data, strategy, run_dir: str):
        self.data = data
        self.strategy = strategy
        self.workers = num_workers(strategy)
        self.worker = worker_index(strategy)
        self.local = strategy.num_replicas_in_sync // self.workers
        self.directory = os.path.join(run_dir, CHECKPOINT_DIR, DATA_DIR, f"worker-{self.worker}")
        self._iterator: HostIterator | None = None

    def iterator(self) -> HostIterator:
        """The iterator (made once; a NaN rollback keeps it, skipping the bad batches)."""
        if self._iterator is None:
            dataset = self.data.stream_dataset(
                self.strategy.num_replicas_in_sync, self.workers, self.worker
            )
            if self.data.cfg.data.service:  # read by a tf.data service (its position saved)
                cfg = self.data.cfg
                job = service.job_name(cfg.run_dir, self.worker)
                # One dispatcher (with its one worker) per pipeline keeps each exact.
                address = service.address_for(cfg.data.service, self.worker)
                dataset = service.distribute(dataset, address, job)
            with tf.device("/cpu:0"):
                self._iterator = HostIterator(dataset, self.strategy, self.local)
        return self._iterator

    def _prefix(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-{step}")

    def save(self, step: int) -> None:
        """Writes the iterator state of `step` (whole or not at all)."""
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f"tmp-{os.getpid()}-{step}")
        written = tf.train.Checkpoint(iterator=self.iterator().iterator).write(tmp)
        final = self._prefix(step)
        parts = sorted(glob.glob(glob.escape(written) + ".*"), key=lambda p: p.endswith(".index"))
        for part in parts:  # the index last: without it the state does not exist
            os.replace(part, final + part[len(written) :])

    def restore(self, step: int) -> None:
        """Reads the iterator state of `step`.

        Raises:
            UnreadableCheckpointError: there is none, or TensorFlow cannot read it.
        """
        prefix = self._prefix(step)
        if not os.path.exists(prefix + ".index"):
            raise UnreadableCheckpointError(
                prefix,
                f"no saved data position for step {step} in {self.directory} (the streamed "
                f"input of this worker)",
            )
        try:
            tf.train.Checkpoint(iterator=self.iterator().iterator).read(prefix).assert_consumed()
        except (tf.errors.OpError, ValueError, AssertionError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UnreadableCheckpointError(
                prefix, f"data position unreadable ({reason})"
            ) from None

    def prune(self, keep_steps: set[int]) -> None:
        """Deletes the states of steps no model checkpoint keeps, and stale temporaries."""
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            match = re.match(r"ckpt-(\d+)\.", name)
            stale = name.startswith(f"tmp-{os.getpid()}-")
            if stale or (match and int(match.group(1)) not in keep_steps):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.directory, name))
