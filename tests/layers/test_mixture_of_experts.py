"""MixtureOfExperts: routing, capacity and drop counts, losses, dense reference."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.layers import MixtureOfExperts
from tests.testing import run_layer_test, to_numpy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 3, 8)).astype("float32")
PADDING = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], "int32")


def reference(layer, x, routing):
    """Numpy: sum over kept choices of gate * expert(x)."""
    w1, w2 = to_numpy(layer.inner_kernel), to_numpy(layer.output_kernel)
    b1, b2 = to_numpy(layer.inner_bias), to_numpy(layer.output_bias)
    experts, gates = to_numpy(routing["experts"]), to_numpy(routing["gates"])
    kept = to_numpy(routing["kept"])
    out = np.zeros_like(x)
    for j, b, t in zip(*np.nonzero(kept)):
        e = experts[j, b, t]
        h = np.maximum(x[b, t] @ w1[e] + b1[e], 0.0)
        out[b, t] += gates[j, b, t] * (h @ w2[e] + b2[e])
    return out


def test_run_layer_test(tmp_path):
    run_layer_test(
        MixtureOfExperts,
        {"num_experts": 4, "hidden_dim": 16, "top_k": 2, "capacity_factor": 2.0},
        {"inputs": X, "padding_mask": PADDING},
        expected_output_shape=(4, 3, 8),
        expected_num_trainable_weights=5,  # router, 2 kernels, 2 biases
        expected_num_non_trainable_weights=2,  # tokens_routed, tokens_dropped
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("top_k", [1, 2])
def test_below_capacity_every_token_gets_exactly_k_experts(top_k):
    layer = MixtureOfExperts(num_experts=4, hidden_dim=16, top_k=top_k, capacity_factor=4.0)
    out = to_numpy(layer(X, padding_mask=PADDING))
    routing = layer.route(X, PADDING)
    kept = to_numpy(routing["kept"])  # (k, B, T)
    np.testing.assert_array_equal(kept.sum(0), PADDING * top_k)
    experts = to_numpy(routing["experts"])
    if top_k == 2:
        assert np.all(experts[0] != experts[1])  # k distinct experts
    gates = to_numpy(routing["gates"])
    if top_k == 2:
        np.testing.assert_allclose(gates.sum(0), 1.0, atol=1e-6)
    real = int(PADDING.sum())
    assert float(layer.tokens_routed.numpy()) == top_k * real
    assert float(layer.tokens_dropped.numpy()) == 0.0
    np.testing.assert_allclose(out, reference(layer, X, routing), atol=1e-5)
    np.testing.assert_array_equal(out[PADDING == 0], 0.0)  # padding is not routed


def _steer(layer, preferences):
    """Router kernel so that a token with one-hot feature f gets logits preferences[f]."""
    kernel = np.zeros((8, layer.num_experts), "float32")
    for feature, logits in enumerate(preferences):
        kernel[feature] = logits
    layer._router.kernel.assign(kernel)


def test_top1_over_capacity_drops_are_counted_exactly():
    layer = MixtureOfExperts(num_experts=2, hidden_dim=16, top_k=1, capacity_factor=1.0)
    x = np.zeros((5, 2, 8), "float32")
    x[..., 0] = 1.0  # every token prefers expert 0
    layer.build(x.shape)
    _steer(layer, [[10.0, -10.0]])
    padding = np.ones((5, 2), "int32")
    padding[4, 1] = 0
    out = to_numpy(layer(x, padding_mask=padding))
    # Position 0: 5 real tokens, capacity ceil(1.0 * 1 * 5 / 2) = 3 -> rows 3, 4 dropped.
    # Position 1: 4 real tokens, capacity 2 -> rows 2, 3 dropped (row 4 is padding).
    routing = layer.route(x, padding)
    np.testing.assert_array_equal(to_numpy(routing["capacity"]), [3, 2])
    expected_kept = np.array([[1, 1], [1, 1], [1, 0], [0, 0], [0, 0]], "float32")
    np.testing.assert_array_equal(to_numpy(routing["kept"])[0], expected_kept)
    assert float(layer.tokens_routed.numpy()) == 9.0
    assert float(layer.tokens_dropped.numpy()) == 4.0
    np.testing.assert_array_equal(out[expected_kept == 0], 0.0)
    assert np.all(np.abs(out[expected_kept == 1]).sum(-1) > 0)


def test_top2_first_choices_are_served_first():
    layer = MixtureOfExperts(num_experts=3, hidden_dim=16, top_k=2, capacity_factor=1.0)
    x = np.zeros((3, 1, 8), "float32")
    x[0, 0, 0] = x[1, 0, 0] = 1.0  # rows 0, 1: expert 0 then 1
    x[2, 0, 1] = 1.0  # row 2: expert 1 then 0
    layer.build(x.shape)
    _steer(layer, [[5.0, 4.0, -5.0], [4.0, 5.0, -5.0]])
    layer(x)
    routing = layer.route(x)
    # Capacity ceil(1.0 * 2 * 3 / 3) = 2. Expert 0: first choices of rows 0, 1, then
    # row 2's second choice (dropped). Expert 1: row 2's first choice, then the second
    # choices of rows 0 (kept) and 1 (dropped).
    np.testing.assert_array_equal(to_numpy(routing["experts"])[:, :, 0], [[0, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(to_numpy(routing["positions"])[:, :, 0], [[0, 1, 0], [1, 2, 2]])
    np.testing.assert_array_equal(to_numpy(routing["kept"])[:, :, 0], [[1, 1, 1], [1, 0, 0]])
    assert float(layer.tokens_routed.numpy()) == 6.0
    assert float(layer.tokens_dropped.numpy()) == 2.0
    out = to_numpy(layer(x))
    np.testing.assert_allclose(out, reference(layer, x, routing), atol=1e-5)


def test_counters_are_updated_inside_tf_function():
    layer = MixtureOfExperts(num_experts=2, hidden_dim=16, top_k=1, capacity_factor=1.0)
    x = np.zeros((5, 2, 8), "float32")
    x[..., 0] = 1.0
    layer.build(x.shape)
    _steer(layer, [[10.0, -10.0]])

    @tf.function
    def run(x):
        layer(x)
        return layer.tokens_dropped.value + 0.0

    assert float(run(x)) == 4.0  # 2 dropped at each position (capacity 3 of 5)
    assert float(layer.tokens_routed.numpy()) == 10.0


def test_losses_golden_values_with_a_uniform_router():
    layer = MixtureOfExperts(
        num_experts=4, hidden_dim=8, top_k=2, aux_loss_weight=0.5, z_loss_weight=0.25
    )
    layer.build(X.shape)
    layer._router.kernel.assign(np.zeros((8, 4), "float32"))
    layer(X, padding_mask=PADDING)
    balance, z_loss = (float(v) for v in layer.losses)
    # Uniform probabilities 1/4; ties pick experts 0 and 1: f = [1/2, 1/2, 0, 0].
    # balance = E * sum f_e P_e = 4 * (1/2 * 1/4 * 2) = 1.
    assert balance == pytest.approx(0.5 * 1.0, rel=1e-6)
    assert z_loss == pytest.approx(0.25 * math.log(4.0) ** 2, rel=1e-6)


def test_losses_do_not_accumulate_across_calls():
    layer = MixtureOfExperts(num_experts=4, hidden_dim=8)
    layer(X)
    first = [float(v) for v in layer.losses]
    layer(X)
    layer(X)
    assert [float(v) for v in layer.losses] == first
    assert len(first) == 2


def test_aux_loss_alone_gives_a_router_gradient():
    layer = MixtureOfExperts(num_experts=4, hidden_dim=8, z_loss_weight=0.0)
    layer.build(X.shape)
    with tf.GradientTape() as tape:
        layer(X, padding_mask=PADDING)
        (aux,) = layer.losses
    gradient = to_numpy(tape.gradient(aux, layer._router.kernel))
    assert np.abs(gradient).max() > 1e-6


def test_router_is_float32_under_mixed_precision():
    layer = MixtureOfExperts(num_experts=4, hidden_dim=8, dtype="mixed_bfloat16")
    out = layer(X)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    routing = layer.route(X)
    assert keras.backend.standardize_dtype(routing["logits"].dtype) == "float32"
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in layer.losses)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_experts": 1, "hidden_dim": 4},
            "num_experts must be an integer >= 2. Received: num_experts=1",
        ),
        ({"num_experts": 2, "hidden_dim": 4, "top_k": 3}, "top_k must not exceed num_experts"),
        (
            {"num_experts": 2, "hidden_dim": 4, "capacity_factor": 0},
            "capacity_factor must be a positive number. Received: capacity_factor=0",
        ),
        (
            {"num_experts": 2, "hidden_dim": 4, "aux_loss_weight": -1},
            "aux_loss_weight must be a number >= 0",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixtureOfExperts(**kwargs)
