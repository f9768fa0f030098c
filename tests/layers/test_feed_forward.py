"""FeedForward: relu, gelu, swiglu against numpy."""

import math

import numpy as np
import pytest

from kerastx.layers import FeedForward
from tests.testing import run_layer_test, to_numpy

X = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_run_layer_test(activation, tmp_path):
    run_layer_test(
        FeedForward,
        {"hidden_dim": 16, "activation": activation, "dropout": 0.1},
        {"inputs": X},
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=4,
        tmp_path=tmp_path if activation == "swiglu" else None,
    )


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_matches_numpy(activation):
    layer = FeedForward(hidden_dim=16, activation=activation)
    out = to_numpy(layer(X))
    w1, b1, w2, b2 = (to_numpy(w) for w in layer.weights)
    h = X @ w1 + b1
    if activation == "relu":
        h = np.maximum(h, 0)
    elif activation == "gelu":
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    else:
        gate, up = h[..., :16], h[..., 16:]
        h = gate / (1 + np.exp(-gate)) * up
    assert w1.shape == (8, 32 if activation == "swiglu" else 16)
    np.testing.assert_allclose(out, h @ w2 + b2, atol=1e-5)


def test_training_flag_reaches_dropout():
    layer = FeedForward(hidden_dim=16, dropout=0.5)
    inference = to_numpy(layer(X, training=False))
    np.testing.assert_array_equal(inference, to_numpy(layer(X)))
    assert np.abs(to_numpy(layer(X, training=True)) - inference).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer. Received: hidden_dim=0"),
        ({"hidden_dim": 4, "activation": "tanh"}, "activation must be one of"),
        (
            {"hidden_dim": 4, "dropout": -0.1},
            r"dropout must be a float in \[0, 1\). Received: dropout=-0.1",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeedForward(**kwargs)
