"""EncoderLayer: standard checks, norms, padding invariance, dropout."""

import numpy as np
import pytest

from kerastx.layers import EncoderLayer
from tests.testing import run_layer_test, to_numpy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 5, 16)).astype("float32")
PADDING = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], "int32")


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        ({}, 16, 0),  # 2 norms x 2, attention 8, feed-forward 4
        ({"norm": "rmsnorm", "norm_position": "post", "activation": "swiglu"}, 14, 0),
        ({"num_experts": 4, "use_rotary_embedding": True}, 17, 2),
    ],
)
def test_run_layer_test(kwargs, trainable, non_trainable, tmp_path):
    run_layer_test(
        EncoderLayer,
        {"num_heads": 2, "ffn_dim": 32, **kwargs},
        {"inputs": X, "padding_mask": PADDING},
        expected_output_shape=(3, 5, 16),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        allow_unchanged=("key/bias",),
        tmp_path=tmp_path,
    )


def test_post_norm_output_is_normalized():
    layer = EncoderLayer(num_heads=2, ffn_dim=32, norm_position="post", dropout=0.0)
    out = to_numpy(layer(X))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1.0, atol=1e-3)


def test_padding_invariance():
    layer = EncoderLayer(num_heads=2, ffn_dim=32, num_experts=4, dropout=0.0)
    out = to_numpy(layer(X, padding_mask=PADDING))
    # Three more padded steps with garbage values change nothing at real positions.
    longer = np.concatenate([X, RNG.normal(size=(3, 3, 16)).astype("float32")], axis=1)
    padding = np.concatenate([PADDING, np.zeros((3, 3), "int32")], axis=1)
    out_longer = to_numpy(layer(longer, padding_mask=padding))
    real = PADDING.astype(bool)
    assert np.abs(out_longer[:, :5][real] - out[real]).max() < 1e-5


def test_training_flag_reaches_dropout():
    layer = EncoderLayer(num_heads=2, ffn_dim=32, dropout=0.3)
    inference = to_numpy(layer(X, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(X)))
    assert np.abs(to_numpy(layer(X, training=True)) - inference).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "num_heads must be a positive integer. Received: num_heads=0"),
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"norm_position": "middle"}, "norm_position must be one of"),
        ({"num_experts": 1}, "num_experts must be 0 .dense feed-forward. or >= 2"),
        ({"num_experts": 2, "experts_top_k": 3}, "experts_top_k must not exceed num_experts"),
        ({"attention_dropout": 1.0}, "attention_dropout must be a float in"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderLayer(**{"num_heads": 2, "ffn_dim": 8, **kwargs})


def test_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="Received: d_model=16, num_heads=3"):
        EncoderLayer(num_heads=3, ffn_dim=8)(X)
