"""The decoders trace into a SavedModel signature whose settings are request inputs."""

import numpy as np
import tensorflow as tf

from kerastx.decoding import beam_search, greedy_search, sample

from .fakes import BOS, HistoryModel


def test_exported_signature_takes_per_request_settings(tmp_path):
    model = HistoryModel(vocab_size=6, seed=81, max_length=6)

    class Decoder(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.int32, name="start_ids"),
                tf.TensorSpec([None], tf.int32, name="max_lengths"),
                tf.TensorSpec([], tf.int32, name="beam_size"),
                tf.TensorSpec([], tf.int32, name="num_return"),
                tf.TensorSpec([], tf.float32, name="length_penalty"),
                tf.TensorSpec([2], tf.int32, name="seed"),
                tf.TensorSpec([], tf.float32, name="temperature"),
                tf.TensorSpec([], tf.int32, name="top_k"),
                tf.TensorSpec([], tf.float32, name="top_p"),
            ]
        )
        def serve(
            self,
            start_ids,
            max_lengths,
            beam_size,
            num_return,
            length_penalty,
            seed,
            temperature,
            top_k,
            top_p,
        ):
            cache = model.cache(tf.shape(start_ids)[0])
            common = dict(max_lengths=max_lengths)
            beam = beam_search(
                model.next_fn,
                start_ids,
                cache,
                6,
                beam_size=beam_size,
                num_return=num_return,
                length_penalty=length_penalty,
                **common,
            )
            sampled = sample(
                model.next_fn,
                start_ids,
                cache,
                6,
                seed=seed,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                **common,
            )
            greedy = greedy_search(model.next_fn, start_ids, cache, 6, **common)
            return {
                "beam_ids": beam.ids,
                "beam_scores": beam.normalized_scores,
                "sample_ids": sampled.ids,
                "greedy_ids": greedy.ids,
            }

    tf.saved_model.save(Decoder(), str(tmp_path))
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    starts, limits = tf.constant([BOS, 4, 5]), tf.constant([6, 3, 5])
    for k, n, alpha, seed, temperature, top_k, top_p in (
        (3, 2, 0.6, [1, 2], 0.9, 4, 0.9),
        (2, 1, 0.0, [3, 4], 1.0, 0, 1.0),
    ):
        out = serve(
            start_ids=starts,
            max_lengths=limits,
            beam_size=tf.constant(k),
            num_return=tf.constant(n),
            length_penalty=tf.constant(alpha),
            seed=tf.constant(seed),
            temperature=tf.constant(temperature),
            top_k=tf.constant(top_k),
            top_p=tf.constant(top_p),
        )
        cache = model.cache(3)
        beam = beam_search(
            model.next_fn,
            starts,
            cache,
            6,
            beam_size=k,
            num_return=n,
            length_penalty=alpha,
            max_lengths=limits,
        )
        sampled = sample(
            model.next_fn,
            starts,
            cache,
            6,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_lengths=limits,
        )
        greedy = greedy_search(model.next_fn, starts, cache, 6, max_lengths=limits)
        np.testing.assert_array_equal(out["beam_ids"], beam.ids)
        np.testing.assert_allclose(out["beam_scores"], beam.normalized_scores, rtol=1e-5)
        np.testing.assert_array_equal(out["sample_ids"], sampled.ids)
        np.testing.assert_array_equal(out["greedy_ids"], greedy.ids)
