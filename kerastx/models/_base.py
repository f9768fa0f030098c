"""Private base of the kerastx models: shared arguments, embeddings, conditions, stats."""

from __future__ import annotations

import inspect
import math

import keras
from keras import ops

from kerastx.layers import _common
from kerastx.layers._transformer_layer import check_block_arguments
from kerastx.layers.dropout import Dropout
from kerastx.layers.mixture_of_experts import MixtureOfExperts
from kerastx.layers.position_embedding import PositionEmbedding
from kerastx.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding

POSITION_ENCODINGS = ("sinusoidal", "learned", "rope")


class TransformerModelBase(keras.Model):
    """Checks and stores the `model:` options shared by every kerastx model.

    The shared arguments and their defaults are declared here once; each model declares
    only its own (layer counts, tying, pooling) and passes the rest on with `**kwargs`.
    `SHARED_ARGUMENTS` lists them in order. Subclasses create their sublayers in
    `build()` with the `_make_*` helpers and call `_embed` / `_condition_vector`.

    Args:
        d_model: int. Model width `D`. Defaults to 512.
        num_heads: int. Attention heads; must divide `d_model`. Defaults to 8.
        ffn_dim: int. Feed-forward inner width. Defaults to 2048.
        activation: str. `"relu"`, `"gelu"` or `"swiglu"`. Defaults to `"relu"`.
        dropout: float. Residual and embedding dropout. Defaults to 0.1.
        attention_dropout: float. Dropout on attention probabilities. Defaults to 0.
        norm: str. `"layernorm"` or `"rmsnorm"`. Defaults to `"layernorm"`.
        norm_position: str. `"pre"` or `"post"`. Defaults to `"pre"`.
        norm_epsilon: float. Defaults to 1e-6.
        position_encoding: str. `"sinusoidal"`, `"learned"` or `"rope"`. Defaults to
            `"sinusoidal"`.
        max_length: int. Positions in a learned table; longest cache for learned
            positions. Defaults to 1024.
        scale_embeddings: bool. Multiply embeddings by `sqrt(d_model)`. Defaults to True.
        num_experts: int. 0 = dense feed-forward; >= 2 = mixture of experts in every
            `moe_every`-th layer of each stack. Defaults to 0.
        experts_top_k: int. Experts per token. Defaults to 2.
        expert_capacity_factor: float. Defaults to 1.25.
        moe_every: int. MoE in layers `moe_every - 1, 2 moe_every - 1, ...`. Defaults to 2.
        moe_aux_loss_weight: float. Load-balancing loss weight. Defaults to 0.01.
        moe_z_loss_weight: float. Router z-loss weight. Defaults to 0.001.
        num_conditions: int. > 0: the condition is an int id in `[0, num_conditions)`.
            Defaults to 0.
        condition_dim: int. > 0: the condition is a float vector `(B, condition_dim)`.
            Defaults to 0. At most one of the two is > 0.
        **kwargs: standard `keras.Model` arguments (`name`, `dtype`).
    """

    def __init__(
        self,
        *,
        d_model=512,
        num_heads=8,
        ffn_dim=2048,
        activation="relu",
        dropout=0.1,
        attention_dropout=0.0,
        norm="layernorm",
        norm_position="pre",
        norm_epsilon=1e-6,
        position_encoding="sinusoidal",
        max_length=1024,
        scale_embeddings=True,
        num_experts=0,
        experts_top_k=2,
        expert_capacity_factor=1.25,
        moe_every=2,
        moe_aux_loss_weight=0.01,
        moe_z_loss_weight=0.001,
        num_conditions=0,
        condition_dim=0,
        **kwargs,
    ):
        arguments = locals()
        shared = {name: arguments[name] for name in SHARED_ARGUMENTS}
        _check_width(d_model, num_heads)
        _check_embeddings(d_model, num_heads, position_encoding, max_length, scale_embeddings)
        check_block_arguments(
            ffn_dim, activation, dropout, attention_dropout, norm, norm_position, norm_epsilon
        )
        _check_experts(
            num_experts,
            experts_top_k,
            expert_capacity_factor,
            moe_every,
            moe_aux_loss_weight,
            moe_z_loss_weight,
        )
        _check_conditions(num_conditions, condition_dim)
        super().__init__(**kwargs)
        for name, value in shared.items():
            setattr(self, name, value)  # self.d_model, self.num_heads, ...

    # -- configuration -------------------------------------------------------------------

    def _base_config(self):
        return {name: getattr(self, name) for name in SHARED_ARGUMENTS}

    def get_build_config(self):
        # The sublayers depend on the constructor arguments only, not on input shapes.
        return {"built": True} if self.built else None

    def build_from_config(self, config):
        if config:
            self.build(None)

    def _ensure_built(self):
        if not self.built:
            self.build(None)

    # -- sublayer factories (called from build) ------------------------------------------

    def _layer_kwargs(self, index):
        """Constructor arguments of the `index`-th encoder or decoder layer."""
        moe = self.num_experts > 0 and (index + 1) % self.moe_every == 0
        return {
            "num_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "activation": self.activation,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "norm": self.norm,
            "norm_position": self.norm_position,
            "norm_epsilon": self.norm_epsilon,
            "use_rotary_embedding": self.position_encoding == "rope",
            "num_experts": self.num_experts if moe else 0,
            "experts_top_k": self.experts_top_k,
            "expert_capacity_factor": self.expert_capacity_factor,
            "moe_aux_loss_weight": self.moe_aux_loss_weight,
            "moe_z_loss_weight": self.moe_z_loss_weight,
            "dtype": self.dtype_policy,
        }

    def _make_layers(self, layer_class, count, prefix, *build_shapes, **options):
        """`count` built encoder or decoder layers named `{prefix}_{i}`, in order."""
        layers = []
        for i in range(count):
            layer = layer_class(**self._layer_kwargs(i), **options, name=f"{prefix}_{i}")
            layer.build(*build_shapes)
            layers.append(layer)
        return layers

    def _make_positions(self, name):
        """Absolute position layer for one input side (None for RoPE)."""
        if self.position_encoding == "sinusoidal":
            layer = SinusoidalPositionEncoding(dtype=self.dtype_policy, name=name)
        elif self.position_encoding == "learned":
            layer = PositionEmbedding(self.max_length, dtype=self.dtype_policy, name=name)
        else:
            return None
        layer.build((None, None, self.d_model))
        return layer

    def _make_final_norm(self, name):
        """The stack's closing norm with pre-norm; None with post-norm."""
        if self.norm_position != "pre":
            return None
        layer = _common.make_norm(self.norm, self.norm_epsilon, self.dtype_policy, name)
        layer.build((None, None, self.d_model))
        return layer

    def _make_dropout(self, name):
        return Dropout(self.dropout, dtype=self.dtype_policy, name=name)

    def _make_condition(self):
        """Condition id -> Embedding, or condition vector -> Dense; None without one."""
        if self.num_conditions:
            layer = keras.layers.Embedding(
                self.num_conditions, self.d_model, dtype=self.dtype_policy, name="condition"
            )
            layer.build((None,))
        elif self.condition_dim:
            layer = keras.layers.Dense(self.d_model, dtype=self.dtype_policy, name="condition")
            layer.build((None, self.condition_dim))
        else:
            return None
        return layer

    # -- call helpers --------------------------------------------------------------------

    def _condition_vector(self, condition):
        """Embeds the per-example condition: `(B,)` ids or `(B, C)` floats -> `(B, D)`."""
        if self._condition is None:
            if condition is not None:
                raise ValueError(
                    "This model takes no condition (num_conditions=0 and condition_dim=0) "
                    "but one was given."
                )
            return None
        if condition is None:
            raise ValueError(
                "This model needs a condition: "
                + (
                    f"int ids in [0, {self.num_conditions}) of shape (B,)"
                    if self.num_conditions
                    else f"a float vector of shape (B, {self.condition_dim})"
                )
            )
        if self.num_conditions:
            condition = ops.cast(condition, "int32")
        return self._condition(condition)  # (B, D)

    def _embed(
        self, token_embedding, positions, dropout, ids, start_index=0, condition=None, training=None
    ):
        """`dropout(E[ids] * sqrt(D) + position + condition)`, `(B, T)` -> `(B, T, D)`.

        `condition` is an embedded condition `(B, D)` or None.
        """
        x = token_embedding(ids)  # (B, T, D)
        if self.scale_embeddings:
            x = x * ops.cast(math.sqrt(self.d_model), x.dtype)
        if positions is not None:
            x = x + positions(x, start_index=start_index)
        if condition is not None:
            x = x + ops.cast(condition, x.dtype)[:, None, :]
        return dropout(x, training=training)

    def _check_cache_length(self, max_length):
        if isinstance(max_length, int):
            _common.check_int("max_length", max_length)
            if self.position_encoding == "learned" and max_length > self.max_length:
                raise ValueError(
                    "A cache longer than the learned position table cannot be filled. "
                    f"Received: max_length={max_length} > model max_length={self.max_length}"
                )

    # -- mixture-of-experts counters -----------------------------------------------------

    def moe_layers(self):
        """The `MixtureOfExperts` layers of the model, in order."""
        return [
            layer.feed_forward
            for layer in self._transformer_layers()
            if isinstance(layer.feed_forward, MixtureOfExperts)
        ]

    def _transformer_layers(self):
        """The encoder/decoder layers, in order (subclasses)."""
        raise NotImplementedError

    def moe_stats(self):
        """Routing counters of the last forward pass, summed over MoE layers and replicas.

        Read outside `strategy.run` (in cross-replica context) to get the sum over
        replicas; works inside or outside `tf.function`.

        Returns:
            dict of float32 scalars `{"moe/tokens_routed", "moe/tokens_dropped"}`:
            token-expert assignments of real tokens, and those over capacity. Empty
            without MoE layers.
        """
        layers = self.moe_layers()
        if not layers:
            return {}
        routed = [ops.convert_to_tensor(layer.tokens_routed.value) for layer in layers]
        dropped = [ops.convert_to_tensor(layer.tokens_dropped.value) for layer in layers]
        return {
            "moe/tokens_routed": ops.sum(ops.stack(routed)),
            "moe/tokens_dropped": ops.sum(ops.stack(dropped)),
        }


# The shared constructor arguments, in order (the keyword-only ones of the base).
SHARED_ARGUMENTS = tuple(
    name
    for name, parameter in inspect.signature(TransformerModelBase.__init__).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY
)


# -- argument checks (pure; called by TransformerModelBase.__init__) ---------------------


def _check_width(d_model, num_heads):
    _common.check_int("d_model", d_model)
    _common.check_int("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(
            "d_model must be divisible by num_heads. "
            f"Received: d_model={d_model}, num_heads={num_heads}"
        )


def _check_embeddings(d_model, num_heads, position_encoding, max_length, scale_embeddings):
    _common.check_choice("position_encoding", position_encoding, POSITION_ENCODINGS)
    if position_encoding == "sinusoidal" and d_model % 2:
        raise ValueError(f"sinusoidal positions need an even d_model. Received: d_model={d_model}")
    if position_encoding == "rope" and (d_model // num_heads) % 2:
        raise ValueError(
            "rope positions need an even head width d_model / num_heads. "
            f"Received: d_model={d_model}, num_heads={num_heads}"
        )
    _common.check_int("max_length", max_length)
    _common.check_bool("scale_embeddings", scale_embeddings)


def _check_experts(num_experts, top_k, capacity_factor, moe_every, aux_weight, z_weight):
    _common.check_experts(num_experts, top_k, capacity_factor, aux_weight, z_weight)
    _common.check_int("moe_every", moe_every)


def _check_conditions(num_conditions, condition_dim):
    _common.check_int("num_conditions", num_conditions, low=0)
    _common.check_int("condition_dim", condition_dim, low=0)
    if num_conditions and condition_dim:
        raise ValueError(
            "At most one of num_conditions and condition_dim may be > 0. "
            f"Received: num_conditions={num_conditions}, condition_dim={condition_dim}"
        )
