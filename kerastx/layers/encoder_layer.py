"""Transformer encoder layer: self-attention and feed-forward (or mixture of experts)."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import masks as masks_lib
from kerastx.layers._transformer_layer import TransformerLayerBase


@keras.saving.register_keras_serializable(package="kerastx")
class EncoderLayer(TransformerLayerBase):
    """One encoder layer: bidirectional self-attention, then a feed-forward block.

    Each block is residual with dropout on its output: `x + dropout(f(norm(x)))`
    (pre-norm) or `norm(x + dropout(f(x)))` (post-norm, as in Vaswani et al. 2017).
    The width `D` comes from the input; `D` must be divisible by `num_heads`.

    Args:
        num_heads: int. Attention heads.
        ffn_dim: int. Feed-forward inner width (per expert with `num_experts`).
        activation: str. `"relu"`, `"gelu"` or `"swiglu"`. Defaults to `"relu"`.
        dropout: float. Residual dropout rate. Defaults to 0.1.
        attention_dropout: float. Dropout on attention probabilities. Defaults to 0.
        norm: str. `"layernorm"` or `"rmsnorm"`. Defaults to `"layernorm"`.
        norm_position: str. `"pre"` or `"post"`. Defaults to `"pre"`.
        norm_epsilon: float. Defaults to 1e-6.
        use_rotary_embedding: bool. RoPE on queries and keys. Defaults to False.
        num_experts: int. 0 for a dense `FeedForward`, >= 2 for a `MixtureOfExperts`.
            Defaults to 0.
        experts_top_k: int. Experts per token. Defaults to 2.
        expert_capacity_factor: float. Defaults to 1.25.
        moe_aux_loss_weight: float. Load-balancing loss weight. Defaults to 0.01.
        moe_z_loss_weight: float. Router z-loss weight. Defaults to 0.001.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(B, S, D)`.
        padding_mask: bool or int tensor `(B, S)`, 1 = real token, or None.
        attention_mask: bool tensor broadcastable to `(B, S, S)`, or None; merged with
            the padding mask.
        training: bool. Enables dropout.

    Returns:
        float tensor `(B, S, D)`.

    Example:

    >>> layer = EncoderLayer(num_heads=2, ffn_dim=32)
    >>> y = layer(keras.random.normal((2, 5, 8)), padding_mask=keras.ops.ones((2, 5)))
    """

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        self._attention_norm = self._make_norm("self_attention_norm")
        self._attention_norm.build(inputs_shape)
        self._attention = self._make_attention(
            width, "self_attention", rotary=self.use_rotary_embedding
        )
        self._attention.build(inputs_shape, inputs_shape)
        self._attention_dropout = self._make_dropout("self_attention_dropout")
        self._feed_forward_norm = self._make_norm("feed_forward_norm")
        self._feed_forward_norm.build(inputs_shape)
        self._feed_forward = self._make_feed_forward(inputs_shape)
        self._feed_forward_dropout = self._make_dropout("feed_forward_dropout")
        self.built = True

    def call(self, inputs, padding_mask=None, attention_mask=None, training=None):
        mask = masks_lib.self_attention_mask(
            ops.shape(inputs)[1], padding_mask=padding_mask, attention_mask=attention_mask
        )  # (B, 1 or S, S)
        x, _ = self._residual(
            inputs,
            self._attention_norm,
            self._attention_dropout,
            lambda y: self._attention(y, y, attention_mask=mask, training=training),
            training,
        )
        x, _ = self._residual(
            x,
            self._feed_forward_norm,
            self._feed_forward_dropout,
            lambda y: self._feed_forward_call(self._feed_forward, y, padding_mask, training),
            training,
        )
        return x  # (B, S, D)
