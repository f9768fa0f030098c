"""`kerastx.inference`: prompt removal, per-request decoding, the XLA decoder."""

import numpy as np
import pytest
import tensorflow as tf

from kerastx import inference
from kerastx.data import synthetic
from kerastx.runs import load_run
from tests import trained_runs


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    return load_run(trained_runs.copy_run(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def lm_model(tmp_path_factory):
    return load_run(trained_runs.lm_run(tmp_path_factory.getbasetemp()))


def assert_same_result(got, want):
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.normalized_scores, want.normalized_scores, rtol=1e-5, atol=1e-6)


def test_drop_prefix_shifts_each_row_by_its_prompt():
    ids = tf.constant([[5, 6, 7, 2, 0], [8, 9, 2, 0, 0], [4, 4, 0, 0, 0]])
    scores = tf.constant([-1.0, -2.0, 0.0])
    result = inference.DecodeResult(ids, tf.constant([4, 3, 2]), scores, scores)
    prefix = tf.constant([2, 0, 2])
    dynamic = inference.drop_prefix(result, prefix, static_shapes=False)
    np.testing.assert_array_equal(dynamic.ids, [[7, 2, 0], [8, 9, 2], [0, 0, 0]])
    np.testing.assert_array_equal(dynamic.lengths, [2, 3, 0])
    np.testing.assert_array_equal(dynamic.scores, result.scores)
    static = inference.drop_prefix(result, prefix, static_shapes=True)
    np.testing.assert_array_equal(static.ids, [[7, 2, 0, 0, 0], [8, 9, 2, 0, 0], [0, 0, 0, 0, 0]])
    lengths = tf.constant([[4, 5], [3, 5], [2, 5]])
    nbest = result._replace(ids=tf.stack([ids, ids[:, ::-1]], axis=1), lengths=lengths)
    shifted = inference.drop_prefix(nbest, prefix, static_shapes=False)
    assert shifted.ids.shape == (3, 2, 5)
    np.testing.assert_array_equal(
        shifted.ids[:, 1], [[7, 6, 5, 0, 0], [0, 0, 2, 9, 8], [0, 4, 4, 0, 0]]
    )
    np.testing.assert_array_equal(shifted.lengths, [[2, 3], [3, 5], [0, 3]])


def _sources(model, count, seed):
    texts, _ = synthetic.generate("copy", count, 1, 12, 20, seed=seed, split="dev")
    return inference.encode_source(model.data.source_tokenizer, tf.constant(texts), 32)


def test_decode_request_equals_decode_batch_for_every_strategy(copy_model):
    source_ids = _sources(copy_model, 6, seed=3)
    settings = inference.settings_from_config(copy_model.cfg.decoding)
    run = tf.function(
        lambda request: inference.decode_request(
            copy_model.model, copy_model.task, {"source_ids": source_ids}, request, settings
        )
    )
    cases = [
        ({"strategy": "greedy"}, {}),
        ({"strategy": "beam", "beam_size": 3, "n_best": 2}, {"beam_size": 3, "n_best": 2}),
        ({"strategy": "sample", "seed": 4, "top_p": 0.9}, {"sampling": True, "seed": 4}),
        ({"strategy": "greedy", "max_length": 4}, {"max_length": 4}),
    ]
    for overrides, request in cases:
        want = inference.decode_batch(
            copy_model.model, copy_model.task, {"source_ids": source_ids}, {**settings, **overrides}
        )
        defaults = inference.request_defaults({**settings, **overrides})
        tensors = {
            name: tf.constant({**defaults, **request}[name], dtype)
            for name, dtype in inference.REQUEST_SETTINGS
        }
        got = run(tensors)
        if want.ids.shape.rank == 2:
            want = inference.DecodeResult(*(x[:, None] for x in want))
        assert_same_result(got, want)
    assert run.experimental_get_tracing_count() == 1


def test_beam_size_one_is_greedy(copy_model):
    source_ids = _sources(copy_model, 4, seed=5)
    settings = inference.settings_from_config(copy_model.cfg.decoding)
    inputs = {"source_ids": source_ids}
    greedy = inference.decode_batch(copy_model.model, copy_model.task, inputs, settings)
    beam = {**settings, "strategy": "beam", "beam_size": 1, "n_best": 1}
    assert_same_result(
        inference.decode_batch(copy_model.model, copy_model.task, inputs, beam), greedy
    )


@pytest.mark.parametrize(
    "overrides", [{"strategy": "greedy"}, {"strategy": "beam", "beam_size": 4, "n_best": 2}]
)
def test_xla_decoder_equals_the_dynamic_decoder(copy_model, overrides):
    settings = inference.settings_from_config(copy_model.cfg.decoding, **overrides)
    plain = inference.Decoder(copy_model.model, copy_model.task, settings)
    xla = inference.Decoder(copy_model.model, copy_model.task, settings, jit_compile=True)
    for count, seed in ((5, 1), (7, 2), (8, 3)):  # batches padded to 8 rows
        inputs = {"source_ids": _sources(copy_model, count, seed)}
        assert_same_result(xla(inputs), plain(inputs))
    # Widths 8 (or 16) and one batch bucket: at most two compilations for three batches.
    assert xla._fn_xla.experimental_get_tracing_count() <= 2


@pytest.mark.parametrize(
    "overrides", [{"strategy": "greedy"}, {"strategy": "beam", "beam_size": 3, "n_best": 2}]
)
def test_xla_decoder_equals_the_dynamic_decoder_for_a_decoder_lm(lm_model, overrides):
    settings = inference.settings_from_config(lm_model.cfg.decoding, **overrides)
    prompts = tf.constant(["c d e", "k", "", "p q r s t u"])
    inputs = {"prompt_ids": inference.encode_prompt(lm_model.data.source_tokenizer, prompts, 32)}
    plain = inference.Decoder(lm_model.model, lm_model.task, settings)(inputs)
    xla = inference.Decoder(lm_model.model, lm_model.task, settings, jit_compile=True)(inputs)
    assert_same_result(xla, plain)
    texts = lm_model.data.target_tokenizer.detokenize(inference.best_ids(plain)).numpy()
    assert texts[0].decode() == trained_runs.counting_line(5)  # "f g ... x"


def test_sampling_runs_without_xla_so_seeded_samples_do_not_change(copy_model):
    settings = inference.settings_from_config(
        copy_model.cfg.decoding, strategy="sample", seed=7, temperature=1.5
    )
    decoder = inference.Decoder(copy_model.model, copy_model.task, settings, jit_compile=True)
    assert not decoder.jit_compile
    inputs = {"source_ids": _sources(copy_model, 6, seed=4)}
    plain = inference.Decoder(copy_model.model, copy_model.task, settings)
    assert_same_result(decoder(inputs), plain(inputs))


def test_uncached_greedy_baseline_of_the_bench_equals_cached_greedy(copy_model):
    from kerastx.bench_decode import uncached_greedy_fn

    source_ids = _sources(copy_model, 6, seed=7)
    settings = inference.settings_from_config(copy_model.cfg.decoding, strategy="greedy")
    want = inference.decode_batch(
        copy_model.model, copy_model.task, {"source_ids": source_ids}, settings
    ).ids.numpy()
    got = uncached_greedy_fn(copy_model.model, settings["max_length"])(source_ids).numpy()
    width = max(want.shape[1], got.shape[1])
    want = np.pad(want, [(0, 0), (0, width - want.shape[1])])
    got = np.pad(got, [(0, 0), (0, width - got.shape[1])])
    ended = (want == inference.EOS_ID).any(axis=1)
    assert ended.sum() >= 2  # rows that end with EOS: then padding after it in both
    for row in range(len(want)):
        length = int((want[row] != 0).sum())  # the cached decoder also stops at its bound
        np.testing.assert_array_equal(got[row, :length], want[row, :length])
        if ended[row]:
            assert not got[row, length:].any()
