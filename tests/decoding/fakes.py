"""Fake `next_fn` models and NumPy reference decoders for the decoding tests.

Every fake has a TensorFlow `next_fn(tokens (B,), cache, index)` and a NumPy twin
`logits_np(fed, index)` that gives the logits after feeding the tokens `fed` (start
token first), so tests can replay any returned sequence independently of the decoder.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

PAD, BOS, EOS = 0, 1, 2


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def table_from_rows(num_steps, vocab_size, rows, default):
    """A `(T, V, V)` log-probability table: `rows[(index, previous)]` = probabilities.

    Unlisted `(index, previous)` pairs get `default`. Probabilities are normalised.
    """
    table = np.empty((num_steps, vocab_size, vocab_size))
    for index in range(num_steps):
        for previous in range(vocab_size):
            probs = np.asarray(rows.get((index, previous), default), np.float64)
            table[index, previous] = np.log(probs / probs.sum())
    return table.astype(np.float32)


class TableModel:
    """Logits `table[index, previous token]`; optionally counts its calls."""

    def __init__(self, table, count_calls=False):
        self.table = np.asarray(table, np.float32)  # (T, V, V)
        self.calls = tf.Variable(0, trainable=False) if count_calls else None

    @classmethod
    def random(cls, num_steps, vocab_size, seed, scale=2.0, **kwargs):
        rng = np.random.default_rng(seed)
        return cls(rng.normal(size=(num_steps, vocab_size, vocab_size)) * scale, **kwargs)

    def cache(self, batch_size):
        return {"steps": tf.zeros([batch_size], tf.int32)}

    def next_fn(self, tokens, cache, index):
        if self.calls is not None:
            self.calls.assign_add(1)
        rows = tf.stack([tf.fill(tf.shape(tokens), index), tokens], axis=-1)  # (B, 2)
        return tf.gather_nd(tf.constant(self.table), rows), {"steps": cache["steps"] + 1}

    def logits_np(self, fed, index):
        return self.table[index, fed[-1]]


class HistoryModel:
    """Logits depend on the whole history through a running hash kept in the cache.

    A beam search that reorders the cache wrongly feeds one beam's hash to another, and
    the replayed score of a returned hypothesis then differs from the reported one.
    """

    def __init__(self, vocab_size, seed, buckets=211, scale=2.0, max_length=8):
        rng = np.random.default_rng(seed)
        self.table = (rng.normal(size=(buckets, vocab_size)) * scale).astype(np.float32)
        self.buckets, self.max_length = buckets, max_length

    def cache(self, batch_size):
        return {
            "hash": tf.zeros([batch_size], tf.int32),
            "history": tf.zeros([batch_size, self.max_length], tf.int32),  # rank-2 leaf
        }

    def next_fn(self, tokens, cache, index):
        hashed = (cache["hash"] * 31 + tokens + 1) % self.buckets  # (B,)
        at_index = tf.equal(tf.range(self.max_length), index)
        history = tf.where(at_index, tokens[:, None], cache["history"])
        logits = tf.gather(tf.constant(self.table), hashed)
        return logits, {"hash": hashed, "history": history}

    def logits_np(self, fed, index):
        hashed = 0
        for token in fed:
            hashed = (hashed * 31 + int(token) + 1) % self.buckets
        return self.table[hashed]


class CopyModel:
    """Puts a large logit on `source[b, index]`: greedy search copies the source."""

    def __init__(self, source, vocab_size, count_calls=False):
        self.source = np.asarray(source, np.int32)  # (B, S)
        self.vocab_size = vocab_size
        self.calls = tf.Variable(0, trainable=False) if count_calls else None

    def cache(self):
        return {"source": tf.constant(self.source)}

    def next_fn(self, tokens, cache, index):
        if self.calls is not None:
            self.calls.assign_add(1)
        last = tf.shape(cache["source"])[1] - 1
        target = tf.gather(cache["source"], tf.minimum(index, last), axis=1)  # (B,)
        return 8.0 * tf.one_hot(target, self.vocab_size), cache


def replay_score(model, start, ids, prefix_length=0):
    """Sum of log-probabilities of `ids` (up to EOS) given `start`, prefix excluded."""
    fed, total = [start], 0.0
    for index, token in enumerate(ids):
        if index >= prefix_length:
            total += log_softmax(model.logits_np(fed, index))[token]
        if token == EOS:
            break
        fed.append(token)
    return total


def greedy_reference(model, start, max_length, prefix=()):
    """Greedy search for one example, in plain Python: `(ids, score)`."""
    fed, ids, score = [start], [], 0.0
    for index in range(max_length):
        log_probs = log_softmax(model.logits_np(fed, index))
        if index < len(prefix):
            token = prefix[index]
        else:
            token = int(np.argmax(log_probs))
            score += log_probs[token]
        ids.append(token)
        if token == EOS:
            break
        fed.append(token)
    return ids, score


def gnmt(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def exhaustive_nbest(model, start, max_length, alpha, n):
    """All sequences up to max_length, ranked by the GNMT-normalised score: top n.

    Returns a list of `(ids, score, normalized_score)`, best first.
    """
    vocab_size = len(model.logits_np([start], 0))
    words = [t for t in range(vocab_size) if t != EOS]
    hypotheses = []
    for length in range(1, max_length + 1):
        bodies = itertools.product(words, repeat=length - 1)
        endings = [[EOS]] if length < max_length else [[EOS]] + [[w] for w in words]
        for body in bodies:
            for ending in endings:
                ids = list(body) + ending
                score = replay_score(model, start, ids)
                hypotheses.append((ids, score, score / gnmt(length, alpha)))
    hypotheses.sort(key=lambda h: -h[2])
    return hypotheses[:n]
