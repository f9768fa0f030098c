"""A small in-memory data module following kerastx.data's contract, for trainer tests.

Task: copy a sequence of symbols 4..V-1. The global stream of per-replica batches is a
pure function of (seed, epoch); batch i of the flat stream goes to worker
(i // L) % P, as in kerastx.data.
"""

import numpy as np
import tensorflow as tf


class FakeTokenizer:
    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def detokenize(self, ids):
        ids = np.asarray(ids)
        out = []
        for row in ids:
            words = []
            for t in row:
                if t in (0, 2):
                    break
                words.append(str(int(t)))
            out.append(" ".join(words))
        return tf.constant(out)


class FakeData:
    def __init__(self, num_examples=64, batch_size=8, vocab_size=12, max_len=6, seed=0):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(1, max_len + 1, size=num_examples)
        self.examples = [rng.integers(4, vocab_size, size=n).tolist() for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.source_tokenizer = self.target_tokenizer = FakeTokenizer(vocab_size)
        self.max_len = max_len
        self.labels = None

    def _epoch_order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def _batches(self, epoch):
        order = self._epoch_order(epoch)
        for index, start in enumerate(range(0, len(order), self.batch_size)):
            ids = order[start : start + self.batch_size]
            yield index, ids

    def _pack(self, epoch, index, ids):
        width = self.max_len + 1
        src = np.zeros([len(ids), width], np.int32)
        tin = np.zeros([len(ids), width], np.int32)
        tout = np.zeros([len(ids), width], np.int32)
        for row, i in enumerate(ids):
            seq = self.examples[i]
            src[row, : len(seq) + 1] = seq + [2]
            tin[row, : len(seq) + 1] = [1] + seq
            tout[row, : len(seq) + 1] = seq + [2]
        return {
            "source_ids": src,
            "target_in_ids": tin,
            "target_out_ids": tout,
            "example_id": np.asarray(ids, np.int64),
            "epoch": np.int64(epoch),
            "index": np.int64(index),
        }

    def train_dataset_fn(self, start=(0, 0)):
        def fn(ctx):
            local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            pipelines, me = ctx.num_input_pipelines, ctx.input_pipeline_id

            def gen():
                flat = 0
                epoch = start[0]
                while True:
                    for index, ids in self._batches(epoch):
                        if epoch == start[0] and index < start[1]:
                            continue
                        if (flat // local) % pipelines == me:
                            yield self._pack(epoch, index, ids)
                        flat += 1
                    epoch += 1

            width = self.max_len + 1
            spec = {
                k: tf.TensorSpec([None, width], tf.int32)
                for k in ("source_ids", "target_in_ids", "target_out_ids")
            }
            spec.update(
                example_id=tf.TensorSpec([None], tf.int64),
                epoch=tf.TensorSpec([], tf.int64),
                index=tf.TensorSpec([], tf.int64),
            )
            return tf.data.Dataset.from_generator(gen, output_signature=spec)

        return fn

    def eval_dataset(self, split, batch_size):
        rows = []
        for start in range(0, 16, batch_size):
            ids = list(range(start, min(start + batch_size, 16)))
            b = self._pack(0, 0, ids)
            b.pop("epoch")
            b.pop("index")
            b["source_text"] = np.array([" ".join(map(str, self.examples[i])) for i in ids])
            b["target_text"] = b["source_text"]
            rows.append({k: tf.constant(v) for k, v in b.items()})
        return rows

    def references(self, split):
        return {" ".join(map(str, e)): [" ".join(map(str, e))] for e in self.examples}
