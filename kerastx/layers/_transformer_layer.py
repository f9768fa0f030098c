"""Private base of `EncoderLayer` and `DecoderLayer`: arguments, residual blocks."""

from __future__ import annotations

import keras

from kerastx.layers import _common
from kerastx.layers.dropout import Dropout
from kerastx.layers.feed_forward import ACTIVATIONS, FeedForward
from kerastx.layers.mixture_of_experts import MixtureOfExperts
from kerastx.layers.multi_head_attention import MultiHeadAttention


def check_block_arguments(
    ffn_dim, activation, dropout, attention_dropout, norm, norm_position, norm_epsilon
) -> None:
    """The arguments of a Transformer block, shared by the layers and the models."""
    _common.check_int("ffn_dim", ffn_dim)
    _common.check_choice("activation", activation, ACTIVATIONS)
    _common.check_rate("dropout", dropout)
    _common.check_rate("attention_dropout", attention_dropout)
    _common.check_choice("norm", norm, _common.NORMS)
    _common.check_choice("norm_position", norm_position, _common.NORM_POSITIONS)
    _common.check_number("norm_epsilon", norm_epsilon, strict=True)


class TransformerLayerBase(keras.layers.Layer):
    """Checks and stores the arguments shared by the encoder and decoder layers.

    Subclasses build their sublayers with `_make_attention`, `_make_feed_forward`, and
    run each sublayer through `_residual`.
    """

    def __init__(
        self,
        num_heads,
        ffn_dim,
        activation="relu",
        dropout=0.1,
        attention_dropout=0.0,
        norm="layernorm",
        norm_position="pre",
        norm_epsilon=1e-6,
        use_rotary_embedding=False,
        num_experts=0,
        experts_top_k=2,
        expert_capacity_factor=1.25,
        moe_aux_loss_weight=0.01,
        moe_z_loss_weight=0.001,
        **kwargs,
    ):
        _common.check_int("num_heads", num_heads)
        check_block_arguments(
            ffn_dim, activation, dropout, attention_dropout, norm, norm_position, norm_epsilon
        )
        _common.check_bool("use_rotary_embedding", use_rotary_embedding)
        _common.check_experts(
            num_experts,
            experts_top_k,
            expert_capacity_factor,
            moe_aux_loss_weight,
            moe_z_loss_weight,
        )
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.activation = activation
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.norm = norm
        self.norm_position = norm_position
        self.norm_epsilon = norm_epsilon
        self.use_rotary_embedding = use_rotary_embedding
        self.num_experts = num_experts
        self.experts_top_k = experts_top_k
        self.expert_capacity_factor = expert_capacity_factor
        self.moe_aux_loss_weight = moe_aux_loss_weight
        self.moe_z_loss_weight = moe_z_loss_weight

    @property
    def feed_forward(self):
        """The `FeedForward` or `MixtureOfExperts` sublayer (after build)."""
        return self._feed_forward

    def _key_dim(self, width):
        if width is None or width % self.num_heads:
            raise ValueError(
                "The model width must be divisible by num_heads. "
                f"Received: d_model={width}, num_heads={self.num_heads}"
            )
        return width // self.num_heads

    def _make_attention(self, width, name, rotary=False):
        return MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self._key_dim(width),
            dropout=self.attention_dropout,
            use_rotary_embedding=rotary,
            dtype=self.dtype_policy,
            name=name,
        )

    def _make_norm(self, name):
        return _common.make_norm(self.norm, self.norm_epsilon, self.dtype_policy, name)

    def _make_dropout(self, name):
        return Dropout(self.dropout, dtype=self.dtype_policy, name=name)

    def _make_feed_forward(self, inputs_shape):
        if self.num_experts:
            layer = MixtureOfExperts(
                num_experts=self.num_experts,
                hidden_dim=self.ffn_dim,
                top_k=self.experts_top_k,
                capacity_factor=self.expert_capacity_factor,
                activation=self.activation,
                aux_loss_weight=self.moe_aux_loss_weight,
                z_loss_weight=self.moe_z_loss_weight,
                dtype=self.dtype_policy,
                name="mixture_of_experts",
            )
        else:
            layer = FeedForward(
                hidden_dim=self.ffn_dim,
                activation=self.activation,
                dtype=self.dtype_policy,
                name="feed_forward",
            )
        layer.build(inputs_shape)
        return layer

    def _feed_forward_call(self, layer, x, padding_mask, training):
        if self.num_experts:
            return layer(x, padding_mask=padding_mask, training=training)
        return layer(x, training=training)

    def _residual(self, x, norm, dropout, block, training):
        """`x + dropout(block(norm(x)))` (pre-norm) or `norm(x + dropout(block(x)))`.

        `block` returns the sublayer output, or a tuple whose first item it is (the rest,
        e.g. an updated cache, is returned alongside).
        """
        y = norm(x) if self.norm_position == "pre" else x
        result = block(y)
        extra = None
        if isinstance(result, tuple):
            result, extra = result[0], result[1:]
        x = x + dropout(result, training=training)
        if self.norm_position == "post":
            x = norm(x)
        return x, extra

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "norm": self.norm,
                "norm_position": self.norm_position,
                "norm_epsilon": self.norm_epsilon,
                "use_rotary_embedding": self.use_rotary_embedding,
                "num_experts": self.num_experts,
                "experts_top_k": self.experts_top_k,
                "expert_capacity_factor": self.expert_capacity_factor,
                "moe_aux_loss_weight": self.moe_aux_loss_weight,
                "moe_z_loss_weight": self.moe_z_loss_weight,
            }
        )
        return config
