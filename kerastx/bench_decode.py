"""Times greedy decoding with and without the key/value cache.

`measure_cached_vs_uncached()` builds a small `Seq2SeqTransformer` and decodes `steps`
tokens greedily two ways, each compiled with `tf.function`:

- cached: `decode_step` inside a `tf.while_loop`, one position per step;
- uncached: at every step the full decoder re-runs over the whole prefix buffer (fixed
  length `steps`, zeros beyond the current position, so shapes stay static) and the
  logits at the current position are read.

A minimal argmax loop is used on purpose: the real decoders live in `kerastx.decoding`.
Run `python -m kerastx.bench_decode` for a one-off figure.
"""

from __future__ import annotations

import time

import tensorflow as tf

from kerastx import runtime
from kerastx.decoding._common import BOS_ID, EOS_ID
from kerastx.models import Seq2SeqTransformer

DEFAULT_MODEL = {
    "source_vocab_size": 64,
    "target_vocab_size": 64,
    "d_model": 256,
    "num_heads": 4,
    "num_encoder_layers": 3,
    "num_decoder_layers": 3,
    "ffn_dim": 1024,
    "dropout": 0.0,
}


def _best_time(fn, *args, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), result)  # wait for the result
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_cached_vs_uncached(
    batch_size=32, steps=64, source_length=32, repeats=3, seed=0, **model_kwargs
):
    """Times `steps` greedy decoding steps with and without the cache.

    Args:
        batch_size: int. Sequences decoded together.
        steps: int. Tokens generated per sequence.
        source_length: int. Length of the random source sequences.
        repeats: int. Timed runs after one warm-up; the best is kept.
        seed: int. Seeds the weights and the sources.
        **model_kwargs: overrides of the `Seq2SeqTransformer` arguments (default: d_model
            256, 4 heads, 3+3 layers, ffn 1024, vocabulary 64, no dropout).

    Returns:
        dict: `cached_s` and `uncached_s` (seconds per full decode, best of `repeats`,
        encoder included in both), `speedup` (`uncached_s / cached_s`), and
        `tokens_match` (both loops produced the same tokens).
    """
    kwargs = {**DEFAULT_MODEL, **model_kwargs}
    source = tf.random.stateless_uniform(
        (batch_size, source_length),
        seed=(seed, 1),
        minval=4,
        maxval=kwargs["source_vocab_size"],
        dtype=tf.int32,
    )
    with runtime.seeded(seed):  # the weights, created when the model is built
        model = Seq2SeqTransformer(**kwargs)
        model({"source_ids": source[:1], "target_in_ids": source[:1, :1]}, training=False)

    @tf.function
    def cached(source):
        state = model.encode(source)
        cache = model.init_cache(state, steps)
        tokens = tf.TensorArray(tf.int32, size=steps)

        def body(i, token, cache, tokens):
            logits, cache = model.decode_step(token, cache, i)
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            return i + 1, token, cache, tokens.write(i, token)

        _, _, _, tokens = tf.while_loop(
            lambda i, *_: i < steps,
            body,
            (tf.constant(0), tf.fill([batch_size], BOS_ID), cache, tokens),
        )
        return tf.transpose(tokens.stack())  # (B, steps)

    @tf.function
    def uncached(source):
        state = model.encode(source)
        # Column i holds the input token of position i; column `steps` is never read.
        prefix = tf.concat(
            [tf.fill([batch_size, 1], BOS_ID), tf.zeros([batch_size, steps], tf.int32)], axis=1
        )

        def body(i, prefix):
            logits = model.decode(prefix[:, :steps], state)  # (B, steps, V), full pass
            token = tf.argmax(tf.gather(logits, i, axis=1), axis=-1, output_type=tf.int32)
            column = tf.one_hot(i + 1, steps + 1, dtype=tf.int32)[None, :]
            return i + 1, prefix + column * token[:, None]

        _, prefix = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), prefix))
        return prefix[:, 1:]  # (B, steps)

    cached(source)  # warm-up: tracing and first run
    uncached(source)
    cached_s, cached_tokens = _best_time(cached, source, repeats=repeats)
    uncached_s, uncached_tokens = _best_time(uncached, source, repeats=repeats)
    return {
        "cached_s": cached_s,
        "uncached_s": uncached_s,
        "speedup": uncached_s / cached_s,
        "tokens_match": bool(tf.reduce_all(cached_tokens == uncached_tokens)),
    }


def uncached_greedy_fn(model, max_length: int, eos_id: int = EOS_ID):
    """A `tf.function(source_ids) -> ids (B, L)` decoding greedily WITHOUT the cache.

    Every step re-runs the full decoder over the prefix generated so far (its length grows
    by one per step) and stops when every row has produced `eos_id` or after `max_length`
    tokens: the baseline the cached decoders are compared with on real data (`make bench`,
    G2P test words).
    """

    @tf.function(reduce_retracing=True)
    def run(source_ids):
        source_ids = tf.cast(source_ids, tf.int32)
        batch = tf.shape(source_ids)[0]
        state = model.encode(source_ids)
        prefix = tf.fill([batch, 1], BOS_ID)
        done = tf.zeros([batch], tf.bool)

        def body(i, prefix, done):
            logits = model.decode(prefix, state)  # (B, i + 1, V): the full pass
            token = tf.argmax(logits[:, -1], axis=-1, output_type=tf.int32)
            token = tf.where(done, 0, token)
            return i + 1, tf.concat([prefix, token[:, None]], axis=1), done | (token == eos_id)

        _, prefix, _ = tf.while_loop(
            lambda i, prefix, done: (i < max_length) & ~tf.reduce_all(done),
            body,
            (tf.constant(0), prefix, done),
            shape_invariants=(
                tf.TensorShape([]),
                tf.TensorShape([None, None]),
                tf.TensorShape([None]),
            ),
        )
        return prefix[:, 1:]

    return run


if __name__ == "__main__":
    print(measure_cached_vs_uncached())
