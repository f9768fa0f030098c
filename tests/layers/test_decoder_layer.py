"""DecoderLayer: standard checks, causality, cache equals full pass, dropout."""

import numpy as np
import pytest

from kerastx.layers import DecoderLayer
from tests.testing import run_layer_test, to_numpy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 4, 16)).astype("float32")
MEMORY = RNG.normal(size=(3, 6, 16)).astype("float32")
PADDING = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], "int32")
MEMORY_MASK = np.array([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], "int32")


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        ({}, 26, 0),  # 3 norms x 2, 2 attentions x 8, feed-forward 4
        ({"norm_position": "post", "num_experts": 2, "experts_top_k": 1}, 27, 2),
    ],
)
def test_run_layer_test(kwargs, trainable, non_trainable, tmp_path):
    run_layer_test(
        DecoderLayer,
        {"num_heads": 2, "ffn_dim": 32, **kwargs},
        {"inputs": X, "memory": MEMORY, "padding_mask": PADDING, "memory_mask": MEMORY_MASK},
        expected_output_shape=(3, 4, 16),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        allow_unchanged=("key/bias",),
        tmp_path=tmp_path,
    )


def test_run_layer_test_without_cross_attention(tmp_path):
    run_layer_test(
        DecoderLayer,
        {"num_heads": 2, "ffn_dim": 32, "use_cross_attention": False, "use_rotary_embedding": True},
        {"inputs": X, "padding_mask": PADDING},
        expected_output_shape=(3, 4, 16),
        expected_num_trainable_weights=16,
        allow_unchanged=("key/bias",),
        tmp_path=tmp_path,
    )


def test_future_steps_do_not_change_the_past():
    layer = DecoderLayer(num_heads=2, ffn_dim=32, dropout=0.0)
    out = to_numpy(layer(X, MEMORY, memory_mask=MEMORY_MASK))
    changed = X.copy()
    changed[:, 2:] = RNG.normal(size=(3, 2, 16))
    out_changed = to_numpy(layer(changed, MEMORY, memory_mask=MEMORY_MASK))
    np.testing.assert_allclose(out_changed[:, :2], out[:, :2], atol=1e-6)
    assert np.abs(out_changed[:, 2:] - out[:, 2:]).max() > 1e-3


@pytest.mark.parametrize("rotary", [False, True])
def test_cache_equals_full_pass(rotary):
    layer = DecoderLayer(num_heads=2, ffn_dim=32, dropout=0.0, use_rotary_embedding=rotary)
    full = to_numpy(layer(X, MEMORY, memory_mask=MEMORY_MASK))
    cache = layer.init_cache(3, 4, memory=MEMORY)
    steps = []
    for t in range(4):
        out, cache = layer(X[:, t : t + 1], memory_mask=MEMORY_MASK, cache=cache, cache_index=t)
        steps.append(to_numpy(out))
    assert np.abs(np.concatenate(steps, axis=1) - full).max() < 1e-5


def test_training_flag_reaches_dropout():
    layer = DecoderLayer(num_heads=2, ffn_dim=32, dropout=0.0, attention_dropout=0.5)
    inference = to_numpy(layer(X, MEMORY, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(X, MEMORY)))
    assert np.abs(to_numpy(layer(X, MEMORY, training=True)) - inference).max() > 1e-3


def test_missing_memory_and_cache_index():
    layer = DecoderLayer(num_heads=2, ffn_dim=8)
    with pytest.raises(ValueError, match="memory is required"):
        layer(X)
    with pytest.raises(ValueError, match="cache_index is required"):
        layer(X, MEMORY, cache=layer.init_cache(3, 4, memory=MEMORY))


def test_bad_use_cross_attention():
    with pytest.raises(
        ValueError, match="use_cross_attention must be a bool. Received: use_cross_attention='yes'"
    ):
        DecoderLayer(num_heads=2, ffn_dim=8, use_cross_attention="yes")
