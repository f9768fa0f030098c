"""Keras 3 Transformer layers (backend-neutral, `keras.ops`).

Mask convention (see `kerastx.layers.masks`): padding masks `(B, T)` with 1 = real token;
attention masks `(B, T, S)` with 1 = may attend; the decoder is causal; with a cache the
causal mask is rectangular.
"""

from kerastx.layers.decoder_layer import DecoderLayer
from kerastx.layers.dropout import Dropout
from kerastx.layers.encoder_layer import EncoderLayer
from kerastx.layers.feed_forward import FeedForward
from kerastx.layers.masks import (
    causal_mask,
    key_padding_attention_mask,
    merge_masks,
    padding_mask,
    self_attention_mask,
)
from kerastx.layers.mixture_of_experts import MixtureOfExperts
from kerastx.layers.multi_head_attention import MultiHeadAttention
from kerastx.layers.normalization import LayerNormalization
from kerastx.layers.position_embedding import PositionEmbedding
from kerastx.layers.rotary_embedding import RotaryEmbedding
from kerastx.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from kerastx.layers.token_embedding import TokenEmbedding

__all__ = [
    "DecoderLayer",
    "Dropout",
    "EncoderLayer",
    "FeedForward",
    "LayerNormalization",
    "MixtureOfExperts",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenEmbedding",
    "causal_mask",
    "key_padding_attention_mask",
    "merge_masks",
    "padding_mask",
    "self_attention_mask",
]
