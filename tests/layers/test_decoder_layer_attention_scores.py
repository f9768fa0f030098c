"""`DecoderLayer(..., return_attention_scores=True)`: the Keras convention, one dict."""

import keras
import numpy as np
import pytest

from kerastx.layers import masks as masks_lib
from kerastx.layers.decoder_layer import DecoderLayer
from tests.testing import to_numpy

B, T, S, D = 2, 4, 5, 8


def inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, D)).astype("float32")
    memory = rng.normal(size=(B, S, D)).astype("float32")
    memory_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    padding = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    return x, memory, memory_mask, padding


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_scores_are_those_of_the_attention_sublayers(norm_position):
    layer = DecoderLayer(num_heads=2, ffn_dim=16, dropout=0.0, norm_position=norm_position)
    x, memory, memory_mask, padding = inputs()
    plain = layer(x, memory, padding_mask=padding, memory_mask=memory_mask)
    y, scores = layer(
        x, memory, padding_mask=padding, memory_mask=memory_mask, return_attention_scores=True
    )
    np.testing.assert_array_equal(to_numpy(y), to_numpy(plain))
    assert sorted(scores) == ["cross_attention", "self_attention"]

    # Recompute both blocks with the sublayers' own `return_attention_scores`.
    self_mask = masks_lib.self_attention_mask(T, padding_mask=padding, causal=True)
    h = layer._self_attention_norm(x) if norm_position == "pre" else x
    out, self_scores = layer._self_attention(
        h, h, attention_mask=self_mask, return_attention_scores=True
    )
    h = x + out
    if norm_position == "post":
        h = layer._self_attention_norm(h)
    q = layer._cross_attention_norm(h) if norm_position == "pre" else h
    _, cross_scores = layer._cross_attention(
        q,
        memory,
        attention_mask=masks_lib.key_padding_attention_mask(memory_mask),
        return_attention_scores=True,
    )
    np.testing.assert_allclose(to_numpy(scores["self_attention"]), to_numpy(self_scores))
    np.testing.assert_allclose(to_numpy(scores["cross_attention"]), to_numpy(cross_scores))
    assert np.all(to_numpy(scores["cross_attention"])[1, :, :, 2:] == 0.0)


def test_decoder_only_layer_returns_self_attention_only():
    layer = DecoderLayer(num_heads=2, ffn_dim=16, use_cross_attention=False)
    x, _, _, padding = inputs()
    _, scores = layer(x, padding_mask=padding, return_attention_scores=True)
    assert list(scores) == ["self_attention"]
    assert tuple(scores["self_attention"].shape) == (B, 2, T, T)


def test_default_returns_the_output_only_and_cache_refuses_scores():
    layer = DecoderLayer(num_heads=2, ffn_dim=16)
    x, memory, _, _ = inputs()
    assert not isinstance(layer(x, memory), tuple)
    cache = layer.init_cache(B, T, memory=memory)
    with pytest.raises(ValueError, match="return_attention_scores"):
        layer(x[:, :1], cache=cache, cache_index=0, return_attention_scores=True)


def test_symbolic_call_with_scores():
    layer = DecoderLayer(num_heads=2, ffn_dim=16)
    x, memory = keras.Input((T, D)), keras.Input((S, D))
    y, scores = layer(x, memory, return_attention_scores=True)
    assert tuple(y.shape) == (None, T, D)
    assert tuple(scores["cross_attention"].shape) == (None, 2, T, S)
