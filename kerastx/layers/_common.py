"""Argument checks and small builders shared by the layers and models (private)."""

from __future__ import annotations

import keras

from kerastx.layers.normalization import LayerNormalization

NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")


def check_int(name, value, low=1):
    """Raises ValueError unless `value` is an int (not bool) >= `low`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {kind}. Received: {name}={value!r}")


def check_rate(name, value):
    """Raises ValueError unless `value` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1). Received: {name}={value!r}")


def check_number(name, value, low=0.0, strict=False):
    """Raises ValueError unless `value` is a number >= `low` (> `low` if `strict`)."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value < low or (strict and value == low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a number {relation} {low}. Received: {name}={value!r}")


def check_choice(name, value, choices):
    """Raises ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}. Received: {name}={value!r}")


def check_bool(name, value):
    """Raises ValueError unless `value` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool. Received: {name}={value!r}")


def make_norm(norm, epsilon, dtype, name):
    """A `LayerNormalization` or `RMSNormalization` (both compute in float32)."""
    if norm == "rmsnorm":
        return keras.layers.RMSNormalization(epsilon=epsilon, dtype=dtype, name=name)
    return LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


def check_experts(num_experts, top_k, capacity_factor, aux_weight, z_weight) -> None:
    """The mixture-of-experts arguments shared by layers and models."""
    check_int("num_experts", num_experts, low=0)
    if num_experts == 1:
        raise ValueError(
            "num_experts must be 0 (dense feed-forward) or >= 2. Received: num_experts=1"
        )
    check_int("experts_top_k", top_k)
    if num_experts and top_k > num_experts:
        raise ValueError(
            "experts_top_k must not exceed num_experts. Received: "
            f"experts_top_k={top_k}, num_experts={num_experts}"
        )
    check_number("expert_capacity_factor", capacity_factor, strict=True)
    check_number("moe_aux_loss_weight", aux_weight)
    check_number("moe_z_loss_weight", z_weight)
