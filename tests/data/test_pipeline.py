"""The training stream: exact resume, sharding, token budget, shapes, padding, contents."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kerastx.data import BOS, EOS, DataError, build_data, data_stats
from kerastx.data.batching import buffer_shuffle

BUDGET = 48


@pytest.fixture
def data(make_cfg, parallel_files):
    src, tgt = parallel_files
    cfg = make_cfg(
        {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "target_tokenizer": {"type": "symbols"},
            "max_source_length": 16,
            "max_target_length": 16,
            "batch_size": BUDGET,
            "bucket_width": 2,
            "bucket_growth": 1.5,
        }
    )
    return build_data(cfg)


def stream(data, start=(0, 0), n=10, context=None):
    """[(epoch, index, example ids, (B, L))] of the first n batches from `start`."""
    ds = data.train_dataset_fn(start)(context)
    return [
        (
            int(b["epoch"]),
            int(b["index"]),
            b["example_id"].numpy().tolist(),
            tuple(b["source_ids"].shape),
        )
        for b in ds.take(n)
    ]


def epoch_lengths(data, epochs=2):
    planner = data.planner(1)
    return [len(planner.batches(e)[1]) for e in range(epochs)]


def test_every_example_once_per_epoch_and_reshuffled(data):
    n0, n1 = epoch_lengths(data)
    full = stream(data, n=n0 + n1)
    ids = [[i for e, _, batch, _ in full if e == epoch for i in batch] for epoch in (0, 1)]
    assert sorted(ids[0]) == sorted(ids[1]) == list(range(60))
    assert ids[0] != ids[1]
    assert [(e, k) for e, k, _, _ in full] == [(0, k) for k in range(n0)] + [
        (1, k) for k in range(n1)
    ]


def test_resume_at_break_points_gives_the_same_example_ids(data):
    n0, n1 = epoch_lengths(data)
    total = n0 + n1 + 3  # two epochs and the start of the third
    full = stream(data, n=total)
    for k in (0, n0 // 2, n0, n0 + 1, n0 + n1):
        if k == 0:
            position = (0, 0)
        else:
            epoch, index, _, _ = full[k - 1]
            position = (epoch, index + 1)  # what the trainer checkpoints
        tail = stream(data, position, total - k)
        assert [b[2] for b in full[:k] + tail] == [b[2] for b in full], k
    # The epoch boundary may also be given as (1, 0).
    assert [b[2] for b in stream(data, (1, 0), 3)] == [b[2] for b in full[n0 : n0 + 3]]


def test_stream_is_a_pure_function_of_seed_and_epoch(data, make_cfg, parallel_files):
    again = build_data(data.cfg)
    assert stream(again, n=8) == stream(data, n=8)
    src, tgt = parallel_files
    other = build_data(
        make_cfg(
            {
                "train": [{"type": "parallel", "source": src, "target": tgt}],
                "target_tokenizer": {"type": "symbols"},
                "max_source_length": 16,
                "max_target_length": 16,
                "batch_size": BUDGET,
                "bucket_width": 2,
                "bucket_growth": 1.5,
            },
            seed=99,
            name="other",
        )
    )
    assert [b[2] for b in stream(other, n=8)] != [b[2] for b in stream(data, n=8)]


def _context(pipelines, pipeline_id, replicas):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id, num_replicas_in_sync=replicas
    )


def test_two_input_pipelines_see_disjoint_examples_covering_the_epoch(data):
    planner = data.planner(2)  # 2 replicas: the global budget is split
    n0 = len(planner.batches(0)[1])
    flat = stream(data, n=2 * n0 + 2, context=_context(1, 0, 2))
    assert all(b[3][0] * b[3][1] <= BUDGET // 2 for b in flat)
    seen = []
    for p in (0, 1):
        mine = stream(data, n=n0 + 1, context=_context(2, p, 2))
        assert mine == flat[p::2][: n0 + 1]  # worker p gets flat batches p, p+2, ...
        seen.append([i for e, _, batch, _ in mine if e == 0 for i in batch])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))


def test_two_pipelines_with_two_local_replicas_each(make_cfg, parallel_files):
    src, tgt = parallel_files
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "parallel", "source": src, "target": tgt}],
                "max_source_length": 16,
                "max_target_length": 16,
                "batch_size": BUDGET,
                "batch_scope": "replica",
            }
        )
    )
    flat = stream(data, n=16)  # per-replica budget: the same flat stream for any R
    for p in (0, 1):
        mine = stream(data, n=4, context=_context(2, p, 4))
        assert [b[:3] for b in mine] == [b[:3] for i, b in enumerate(flat) if (i // 2) % 2 == p][:4]


def test_token_budget_bucket_shapes_and_padding(data):
    n0, n1 = epoch_lengths(data)
    boundaries = data.boundaries.tolist()
    assert boundaries == [2, 4, 6, 9, 14, 16]
    shapes = collections.defaultdict(set)
    order = collections.defaultdict(list)
    ds = data.train_dataset_fn()(None)
    for b in ds.take(n0 + n1):
        batch, length = b["source_ids"].shape
        assert b["target_in_ids"].shape == b["target_out_ids"].shape == (batch, length)
        assert batch * length <= BUDGET
        assert length in boundaries
        shapes[int(b["epoch"])].add((batch, length))
        order[int(b["epoch"])].append((batch, length))
        src = b["source_ids"].numpy()
        real = src != 0
        lengths = real.sum(axis=1)
        assert (src[np.arange(batch), lengths - 1] == EOS).all()
        assert (real == (np.arange(length) < lengths[:, None])).all()
        t_in, t_out = b["target_in_ids"].numpy(), b["target_out_ids"].numpy()
        assert (t_in[:, 0] == BOS).all()
        assert (t_in[:, 1:] == np.where(t_out[:, :-1] == EOS, 0, t_out[:, :-1])).all()
    for batches in order.values():
        # Full batches (budget // boundary examples) first; then at most one partial
        # batch per bucket, shortest bucket first.
        full = [b == BUDGET // length for b, length in batches]
        partial = [length for (b, length), f in zip(batches, full) if not f]
        assert full == [True] * (len(full) - len(partial)) + [False] * len(partial)
        assert partial == sorted(set(partial)) and len(partial) >= 1
    stats = data_stats(data.cfg)["batching"]["bucketed"]
    assert stats["distinct_shapes"] == len(shapes[0]) <= 2 * len(boundaries)
    assert stats["max_batch_tokens"] <= BUDGET
    assert stats["batches"] == n0


def test_global_budget_is_split_over_replicas(data):
    for b in data.train_dataset_fn()(_context(1, 0, 2)).take(20):
        batch, length = b["source_ids"].shape
        assert batch * length <= BUDGET // 2


def test_batches_decode_to_the_raw_lines(data, parallel_files):
    src_lines = Path(parallel_files[0]).read_text().splitlines()
    tgt_lines = Path(parallel_files[1]).read_text().splitlines()
    for b in data.train_dataset_fn()(None).take(3):
        ids = b["example_id"].numpy()
        assert data.source_tokenizer.detokenize(b["source_ids"]).numpy().tolist() == [
            src_lines[i].encode() for i in ids
        ]
        assert data.target_tokenizer.detokenize(b["target_out_ids"]).numpy().tolist() == [
            tgt_lines[i].encode() for i in ids
        ]


def test_examples_unit_with_no_bucketing(make_cfg, parallel_files):
    src, tgt = parallel_files
    data = build_data(
        make_cfg(
            {
                "train": [{"type": "parallel", "source": src, "target": tgt}],
                "target_tokenizer": {"type": "symbols"},
                "max_source_length": 16,
                "max_target_length": 20,
                "batch_size": 8,
                "batch_unit": "examples",
                "bucket_width": 0,
                "shuffle_buffer": 0,
            }
        )
    )
    batches = stream(data, n=8)
    assert [b[3] for b in batches] == [(8, 20)] * 7 + [(4, 20)]
    assert [i for b in batches for i in b[2]] == list(range(60))  # no shuffle: file order


def test_start_past_the_end_of_the_epoch_is_an_error(data):
    (n0,) = epoch_lengths(data, 1)
    assert stream(data, (0, n0), 1)[0][:2] == (1, 0)  # one past the last batch: next epoch
    message = (
        f"start position (0, {n0 + 1}) is past the end of epoch 0 ({n0} batches with 1 "
        f"replicas); the saved position does not match this data or batching"
    )
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        data.train_dataset_fn((0, n0 + 1))(None)


def test_buffer_shuffle_is_tf_data_shuffle_semantics():
    items = np.arange(1000, dtype=np.int64)
    out = buffer_shuffle(items, 50, np.random.default_rng(5))
    assert sorted(out.tolist()) == items.tolist() and out.tolist() != items.tolist()
    assert (out < np.arange(1000) + 50).all()  # output k comes from the first k + 50 inputs
    assert buffer_shuffle(items, 1, np.random.default_rng(5)).tolist() == items.tolist()
    assert out.tolist() == buffer_shuffle(items, 50, np.random.default_rng(5)).tolist()
