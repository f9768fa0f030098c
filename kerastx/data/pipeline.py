"""The tf.data pipelines: the infinite training stream and the finite evaluation sets.

Training stream (one per input pipeline, see `train_dataset`): epochs `e0, e0+1, ...`
concatenated, each epoch's batches planned by `batching.Planner` (pure function of the
seed and the epoch), numbered by their index in the epoch. Every worker builds the same
flat stream of per-replica batches; with R replicas in sync, P input pipelines and
L = R // P local replicas, flat batch i (counted from the start position) goes to
pipeline `(i // L) % P`, and the strategy deals a pipeline's batches round-robin to its L
local replicas. So optimizer step s consumes flat batches `s*R .. s*R + R - 1` on any
strategy. A batch is only materialized (gathered and padded) by the pipeline that keeps
it.

Resuming from `(epoch, index)` produces exactly the tail of the uninterrupted stream:
the start epoch is planned in full and its first `index` batches are skipped (they are
never materialized); earlier epochs are never replayed. Index `n_e` (one past the last
batch of epoch e) is valid and continues with epoch e + 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from kerastx.special_ids import BOS_ID as BOS
from kerastx.special_ids import EOS_ID as EOS
from kerastx.special_ids import PAD_ID as PAD

_FOREVER = 2**62


@dataclasses.dataclass
class Store:
    """Examples as tensors, indexed by row.

    Attributes:
        source: tf.RaggedTensor `(N, None)` int32, tokens without specials.
        target: tf.RaggedTensor or None.
        example_id: `(N,)` int64.
        label: `(N,)` int32 or None.
        condition: `(N,)` int32 or None.
        source_text: `(N,)` string or None (evaluation only).
        target_text: `(N,)` string or None (evaluation only).
    """

    source: tf.RaggedTensor
    target: tf.RaggedTensor | None
    example_id: tf.Tensor
    label: tf.Tensor | None = None
    condition: tf.Tensor | None = None
    source_text: tf.Tensor | None = None
    target_text: tf.Tensor | None = None


def _with_eos(tokens: tf.RaggedTensor, length) -> tf.Tensor:
    """tokens + EOS, padded to `length`: `(B, length)` int32."""
    batch = tokens.nrows()
    dense = tokens.to_tensor(default_value=PAD, shape=tf.stack([batch, tf.cast(length, tf.int64)]))
    eos = tf.one_hot(tokens.row_lengths(), tf.cast(length, tf.int32), dtype=tf.int32)
    return dense + EOS * eos


def _with_bos(tokens: tf.RaggedTensor, length) -> tf.Tensor:
    """BOS + tokens, padded to `length`: `(B, length)` int32."""
    batch = tokens.nrows()
    body = tokens.to_tensor(
        default_value=PAD, shape=tf.stack([batch, tf.cast(length, tf.int64) - 1])
    )
    return tf.concat([tf.fill(tf.stack([batch, 1]), tf.constant(BOS, tf.int32)), body], axis=1)


def frame_fields(fields: dict, layout: dict, source_length, target_length) -> dict:
    """The batch keys of the layout from a batch's fields (ragged token rows, ids).

    Args:
        fields: dict. "source" / "target" ragged `(B, None)` tokens without specials,
            "label" `(B,)`, and the keys copied as they are: "example_id",
            "condition", "source_text", "target_text" (those present).
        layout: dict. The family's batch layout (`Task.layout`): key -> (field,
            framing); framing "eos" = tokens + EOS, "bos" = BOS + tokens, None = one
            id per example.
        source_length: scalar int. Padded length of source-field keys.
        target_length: scalar int. Padded length of target-field keys.
    """
    lengths = {"source": source_length, "target": target_length}
    frame = {"eos": _with_eos, "bos": _with_bos}
    batch: dict = {}
    for key, (name, framing) in layout.items():
        value = fields[name]
        batch[key] = value if framing is None else frame[framing](value, lengths[name])
    for key in ("example_id", "condition", "source_text", "target_text"):
        if fields.get(key) is not None:
            batch[key] = fields[key]
    return batch


def materialize(store: Store, layout: dict, rows, source_length, target_length) -> dict:
    """Gathers the rows of a batch and pads them; the batch keys of the data contract.

    Args:
        store: Store.
        layout: dict. The family's batch layout (see `frame_fields`).
        rows: `(B,)` int64 rows.
        source_length: scalar int. Padded length of source-field keys.
        target_length: scalar int. Padded length of target-field keys.

    Returns:
        dict of tensors (see the package docstring).
    """
    names = set(name for name, _ in layout.values())
    names.update(("example_id", "condition", "source_text", "target_text"))
    fields = {
        name: tf.gather(getattr(store, name), rows)
        for name in names
        if getattr(store, name) is not None
    }
    return frame_fields(fields, layout, source_length, target_length)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(
    planner,
    store: Store,
    layout: dict,
    start: tuple[int, int],
    num_pipelines: int = 1,
    pipeline_id: int = 0,
    local_replicas: int = 1,
    num_parallel_calls: int = -1,
) -> tf.data.Dataset:
    """The infinite stream of per-replica batches of one input pipeline.

    Args:
        planner: batching.Planner (with the per-replica capacities).
        store: Store of the training examples.
        layout: dict. The family's batch layout (see `materialize`).
        start: (epoch, index). Position of the first batch of the stream.
        num_pipelines: int. P, the number of input pipelines.
        pipeline_id: int. This pipeline, 0 .. P-1.
        local_replicas: int. L = replicas in sync // P.
        num_parallel_calls: int. -1 = AUTOTUNE.

    Returns:
        tf.data.Dataset of batch dicts, with scalar int64 `epoch` and `index`.
    """
    start_epoch, start_index = (int(x) for x in start)

    def epoch_batches(epoch, skip):
        def plan(e, k):
            rows, sizes, lengths, index = planner.plan(int(e), int(k))
            return rows, sizes, lengths, index

        rows, sizes, lengths, index = tf.numpy_function(
            plan, [epoch, skip], [tf.int64, tf.int64, tf.int32, tf.int64], stateful=False
        )
        rows.set_shape([None])
        sizes.set_shape([None])
        lengths.set_shape([None])
        index.set_shape([None])
        batches = tf.RaggedTensor.from_row_lengths(rows, sizes, validate=False)
        epochs = tf.fill(tf.shape(index), tf.cast(epoch, tf.int64))
        return tf.data.Dataset.from_tensor_slices((batches, lengths, epochs, index))

    first = epoch_batches(tf.constant(start_epoch, tf.int64), tf.constant(start_index, tf.int64))
    rest = tf.data.Dataset.range(start_epoch + 1, _FOREVER).flat_map(
        lambda e: epoch_batches(e, tf.constant(0, tf.int64))
    )
    ds = first.concatenate(rest)
    if num_pipelines > 1:
        group = tf.constant(local_replicas, tf.int64)
        pipes = tf.constant(num_pipelines, tf.int64)
        ds = ds.enumerate().filter(lambda i, x: tf.equal((i // group) % pipes, pipeline_id))
        ds = ds.map(lambda i, x: x)

    def build(rows, length, epoch, index):
        batch = materialize(store, layout, rows, length, length)
        batch["epoch"] = epoch
        batch["index"] = index
        return batch

    calls = tf.data.AUTOTUNE if num_parallel_calls == -1 else num_parallel_calls
    ds = ds.map(build, num_parallel_calls=calls, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_batches(lengths_src, lengths_tgt, boundaries, batch_size: int):
    """Consecutive batches in file order: `(rows, sizes, source_lengths, target_lengths)`."""
    n = len(lengths_src)
    rows = np.arange(n, dtype=np.int64)
    starts = np.arange(0, n, batch_size)
    sizes = np.minimum(batch_size, n - starts).astype(np.int64)

    def padded(lengths):
        if lengths is None:
            return np.zeros(len(starts), np.int32)
        longest = np.maximum.reduceat(lengths, starts) if n else np.zeros([0], np.int64)
        idx = np.minimum(np.searchsorted(boundaries, longest, side="left"), len(boundaries) - 1)
        return np.maximum(boundaries[idx], longest).astype(np.int32)

    return rows, sizes, padded(lengths_src), padded(lengths_tgt)


def eval_dataset(
    store: Store, layout: dict, lengths_src, lengths_tgt, boundaries, batch_size: int
) -> tf.data.Dataset:
    """A finite dataset of an evaluation set, in file order, every example kept."""
    rows, sizes, src_len, tgt_len = eval_batches(lengths_src, lengths_tgt, boundaries, batch_size)
    batches = tf.RaggedTensor.from_row_lengths(rows, sizes, validate=False)
    ds = tf.data.Dataset.from_tensor_slices((batches, src_len, tgt_len))
    ds = ds.map(
        lambda r, s, t: materialize(store, layout, r, s, t),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
