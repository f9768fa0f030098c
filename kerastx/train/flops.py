"""Model FLOPs per step and the machine's measured matmul rate, for MFU.

Training FLOPs per token ~ 6 x the parameters the token passes through (forward 2,
backward 4) plus the attention score and mix products (12 x layers x d_model x key length
per query token). Embedding lookups are free; the output projection is a matmul.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import tensorflow as tf


def measure_matmul_rate(size: int = 1024, seconds: float = 0.5, dtype=tf.float32) -> float:
    """FLOP/s of repeated `size x size` matmuls on the default device, measured now."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2], dtype=dtype)
    b = tf.random.stateless_normal([size, size], seed=[3, 4], dtype=dtype)

    @tf.function
    def run(n):
        acc = tf.zeros([size, size], dtype)
        for _ in tf.range(n):
            acc += tf.matmul(a, b)
        return acc

    run(tf.constant(2)).numpy()  # trace and warm up
    n, elapsed = 4, 0.0
    while True:
        t0 = time.perf_counter()
        run(tf.constant(n)).numpy()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or n >= 1 << 16:
            break
        n *= 2
    return 2.0 * size**3 * n / elapsed


@functools.cache
def matmul_rate(size: int = 1024, seconds: float = 0.5, dtype=tf.float32) -> float:
    """`measure_matmul_rate`, measured once per process (about a second) and reused by
    later trainers of the same process, e.g. a resumed run or a test session."""
    return measure_matmul_rate(size, seconds, dtype)


def _count(variables) -> float:
    return float(sum(np.prod(v.shape) for v in variables))


def model_flops(model, encoder: bool, decoder: bool):
    """Returns `fn(sums) -> FLOPs` for the window sums of the trainer's step statistics.

    Args:
        model: the built model (parameters counted by variable path).
        encoder: bool. Source tokens pass an encoder (seq2seq, classifiers).
        decoder: bool. Target tokens pass a decoder and the output projection
            (seq2seq, LMs); with an encoder too, they also attend to it.
    """
    d_model = getattr(model, "d_model", 0)
    enc_params = _count(
        v for v in model.trainable_variables if "encoder" in v.path and "embedding" not in v.path
    )
    dec_params = _count(
        v for v in model.trainable_variables if "decoder" in v.path and "embedding" not in v.path
    )
    vocab = getattr(model, "target_vocab_size", getattr(model, "vocab_size", 0))
    out_params = float(vocab * d_model)
    enc_layers = getattr(model, "num_encoder_layers", getattr(model, "num_layers", 0))
    dec_layers = getattr(model, "num_decoder_layers", getattr(model, "num_layers", 0))

    def flops(sums: dict) -> float:
        src = sums.get("source_tokens", 0.0)
        tgt = sums.get("tokens", 0.0)
        total = 0.0
        if encoder:
            total += 6 * enc_params * src
            total += 12 * enc_layers * d_model * sums.get("attn_source", 0.0)
        if decoder:
            total += 6 * dec_params * tgt + 6 * out_params * tgt
            total += 12 * dec_layers * d_model * sums.get("attn_self", 0.0)
        if encoder and decoder:
            total += 12 * dec_layers * d_model * sums.get("attn_cross", 0.0)
        return total

    return flops
