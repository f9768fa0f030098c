"""The order of training examples and their batches: a pure function of (seed, epoch).

Epoch plan, computed with NumPy generators seeded by `(seed, ...)` only:

1. Mixing. With one corpus an epoch is the corpus. With several, an epoch holds as many
   examples as all corpora together, and corpus c contributes
   `round(total * weight_c / sum(weights))` of them (at least 1): each corpus is read as
   an endless stream of passes, every pass a fresh seeded permutation, and epoch e takes
   the next share of that stream - so every example of a corpus is seen before any is
   repeated, and a small corpus with a large weight is repeated within an epoch.
2. Shuffling (`data.shuffle_buffer` > 0): a uniform permutation of the epoch when the
   buffer holds the whole epoch (vectorized, the fast path); otherwise the algorithm of
   `tf.data.Dataset.shuffle` with that buffer (each output a uniform pick from the
   buffer), run over the epoch's row numbers.
3. Bucketing. An example's length is `max(source length + 1, target length + 1)` (one
   side for LM and classifier). Bucket boundaries start at `bucket_width` and grow by at
   least `bucket_width` and at least the factor `bucket_growth`, the last one being the
   longest allowed length; `bucket_width: 0` = one bucket, everything padded to the
   longest allowed length. A batch of bucket b holds `budget // boundary_b` examples
   (tokens) or `budget` examples (examples), where budget is the per-replica batch size;
   a batch's tokens `examples x boundary` never exceed the budget. Examples are
   dealt in shuffled order into their bucket; a bucket's batch is emitted when full, in
   the order the batches fill up; at the end of the epoch the partial batches are
   emitted, shortest bucket first. So at most two batch shapes per bucket occur in an
   epoch (full and remainder), and both sides of a batch are padded to the boundary.
"""

from __future__ import annotations

import math

import numpy as np

from kerastx.data.errors import DataError

_MIX, _SHUFFLE = 101, 202


def bucket_boundaries(max_length: int, width: int, growth: float) -> np.ndarray:
    """The padded lengths of the buckets, ascending, the last one `max_length`."""
    if width == 0:
        return np.asarray([max_length], np.int64)
    bounds = [width]
    while bounds[-1] < max_length:
        bounds.append(max(bounds[-1] + width, math.ceil(bounds[-1] * growth)))
    bounds = [min(b, max_length) for b in bounds]
    return np.asarray(sorted(set(bounds)), np.int64)


def per_replica_budget(batch_size: int, unit: str, scope: str, num_replicas: int) -> int:
    """The batch size each replica gets, in batch_unit."""
    if scope == "replica":
        return batch_size
    if batch_size % num_replicas:
        what = "tokens" if unit == "tokens" else "examples"
        raise DataError(
            f"data.batch_size={batch_size} ({what}, global) is not divisible by the "
            f"{num_replicas} replicas; use a multiple of {num_replicas} or batch_scope: replica"
        )
    return batch_size // num_replicas


def capacities(boundaries: np.ndarray, budget: int, unit: str) -> np.ndarray:
    """Examples per batch of each bucket."""
    if unit == "examples":
        return np.full(len(boundaries), budget, np.int64)
    longest = int(boundaries[-1])
    if budget < longest:
        raise DataError(
            f"data.batch_size gives {budget} tokens per replica, fewer than the longest "
            f"allowed example ({longest} tokens = max(max_source_length, max_target_length)); "
            f"raise data.batch_size or lower the maximum lengths"
        )
    return np.maximum(budget // boundaries, 1).astype(np.int64)


def buffer_shuffle(items: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The shuffle of `tf.data.Dataset.shuffle(buffer)`, seeded by `rng`.

    The buffer starts with the first `buffer` items; each output is a uniform pick from
    the buffer, whose slot the next input refills; when the input is exhausted the
    buffer empties in random order. A Python loop: O(N) per epoch.
    """
    picks = rng.random(len(items))
    pool = items[:buffer].tolist()
    rest = items[buffer:].tolist()
    out = []
    for k, u in enumerate(picks):
        j = int(u * len(pool))
        out.append(pool[j])
        if k < len(rest):
            pool[j] = rest[k]
        else:
            pool[j] = pool[-1]
            pool.pop()
    return np.asarray(out, dtype=items.dtype)


class Planner:
    """Plans the batches of every epoch of the training stream.

    Args:
        lengths: int array `(N,)`. Batching length of each stored example.
        sizes: list of int. Examples of each corpus; corpus c owns the rows
            `sum(sizes[:c]) .. sum(sizes[:c+1]) - 1`.
        weights: list of float. Sampling weight of each corpus.
        boundaries: int array. Bucket boundaries.
        caps: int array. Examples per batch of each bucket.
        seed: int. The experiment seed.
        shuffle_buffer: int. 0 = keep the order.
    """

    def __init__(self, lengths, sizes, weights, boundaries, caps, seed, shuffle_buffer):
        self.lengths = np.asarray(lengths, np.int64)
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.boundaries = np.asarray(boundaries, np.int64)
        self.caps = np.asarray(caps, np.int64)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        total = sum(self.sizes)
        if len(self.sizes) == 1:
            self.quotas = list(self.sizes)
        else:
            w = float(sum(weights))
            self.quotas = [
                max(1, round(total * wc / w)) if s else 0 for s, wc in zip(self.sizes, weights)
            ]
        self.bucket = np.searchsorted(self.boundaries, self.lengths, side="left")

    @property
    def epoch_size(self) -> int:
        """Examples per epoch."""
        return int(sum(self.quotas))

    def order(self, epoch: int) -> np.ndarray:
        """The rows of epoch `epoch`, in the order they are batched."""
        shuffle = self.shuffle_buffer > 0
        parts = []
        for c, (size, quota) in enumerate(zip(self.sizes, self.quotas)):
            if not quota:
                continue
            pos = np.arange(epoch * quota, (epoch + 1) * quota, dtype=np.int64)
            passes, within = pos // size, pos % size
            if shuffle and len(self.sizes) > 1:
                rows = np.empty_like(within)
                for p in np.unique(passes):
                    perm = np.random.default_rng([self.seed, _MIX, c, int(p)]).permutation(size)
                    sel = passes == p
                    rows[sel] = perm[within[sel]]
            else:
                rows = within
            parts.append(self.offsets[c] + rows)
        order = np.concatenate(parts) if parts else np.zeros([0], np.int64)
        if shuffle and len(order) > 1:
            rng = np.random.default_rng([self.seed, _SHUFFLE, int(epoch)])
            if self.shuffle_buffer >= len(order):
                order = order[rng.permutation(len(order))]
            else:
                order = buffer_shuffle(order, self.shuffle_buffer, rng)
        return order

    def batches(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batches of an epoch: `(rows, sizes, padded_lengths)`.

        `rows` holds every batch's rows one after the other, `sizes[k]` the number of
        examples of batch k and `padded_lengths[k]` its bucket boundary.
        """
        order = self.order(epoch)
        buckets = self.bucket[order]
        emitted = []  # (emission key, rows, boundary)
        n = len(order)
        for b in np.unique(buckets):
            positions = np.flatnonzero(buckets == b)
            cap = int(self.caps[b])
            for start in range(0, len(positions), cap):
                chunk = positions[start : start + cap]
                key = int(chunk[-1]) if len(chunk) == cap else n + int(b)
                emitted.append((key, order[chunk], int(self.boundaries[b])))
        emitted.sort(key=lambda item: item[0])
        if not emitted:
            empty = np.zeros([0], np.int64)
            return empty, empty, empty
        rows = np.concatenate([e[1] for e in emitted]).astype(np.int64)
        sizes = np.asarray([len(e[1]) for e in emitted], np.int64)
        lengths = np.asarray([e[2] for e in emitted], np.int64)
        return rows, sizes, lengths

    def plan(self, epoch: int, skip: int = 0):
        """`batches(epoch)` from batch `skip` on, with each batch's index in the epoch."""
        rows, sizes, lengths = self.batches(int(epoch))
        skip = int(min(max(skip, 0), len(sizes)))
        first = int(sizes[:skip].sum())
        index = np.arange(skip, len(sizes), dtype=np.int64)
        return rows[first:], sizes[skip:], lengths[skip:].astype(np.int32), index
