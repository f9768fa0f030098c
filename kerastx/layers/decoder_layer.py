"""Transformer decoder layer: causal self-attention, cross-attention, feed-forward."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import masks as masks_lib
from kerastx.layers._transformer_layer import TransformerLayerBase


@keras.saving.register_keras_serializable(package="kerastx")
class DecoderLayer(TransformerLayerBase):
    """One decoder layer: causal self-attention, cross-attention, feed-forward block.

    Blocks are residual as in `EncoderLayer`. The self-attention is causal. With a cache
    the layer decodes incrementally: the keys and values of the `T` new steps are written
    into the self-attention cache at `cache_index` (queries see keys `0 .. index + i`),
    and the cross-attention uses keys and values projected once from the memory (see
    `init_cache`).

    Args:
        use_cross_attention: bool. False for a decoder-only model. Defaults to True.
        (the others): as in `EncoderLayer`.

    Call arguments:
        inputs: float tensor `(B, T, D)`.
        memory: float tensor `(B, S, D)` (encoder output), or None without
            cross-attention or with a cache.
        padding_mask: bool or int tensor `(B, T)`, 1 = real token, or None. Without a
            cache it masks padded keys; with one it only keeps padded steps out of
            expert routing.
        memory_mask: bool or int tensor `(B, S)`, 1 = real source token, or None.
        cache: dict from `init_cache` (after earlier updates), or None.
        cache_index: int or scalar int tensor. Position of `inputs`' first step; needed
            with `cache`.
        return_attention_scores: bool. Also return the attention probabilities (as
            `keras.layers.MultiHeadAttention` does); not with a cache. Defaults to False.
        training: bool. Enables dropout.

    Returns:
        `outputs (B, T, D)`; `(outputs, cache)` when a cache is given; with
        `return_attention_scores`, `(outputs, scores)`: `scores["self_attention"]`
        `(B, N, T, T)` and, with cross-attention, `scores["cross_attention"]`
        `(B, N, T, S)`, in the compute dtype (zero on blocked keys).

    Example:

    >>> layer = DecoderLayer(num_heads=2, ffn_dim=32)
    >>> x, memory = keras.random.normal((2, 4, 8)), keras.random.normal((2, 6, 8))
    >>> y = layer(x, memory)                                         # (2, 4, 8)
    >>> cache = layer.init_cache(memory, max_length=4)
    >>> y0, cache = layer(x[:, :1], cache=cache, cache_index=0)      # (2, 1, 8)
    """

    def __init__(self, num_heads, ffn_dim, use_cross_attention=True, **kwargs):
        if not isinstance(use_cross_attention, bool):
            raise ValueError(
                "use_cross_attention must be a bool. "
                f"Received: use_cross_attention={use_cross_attention!r}"
            )
        super().__init__(num_heads, ffn_dim, **kwargs)
        self.use_cross_attention = use_cross_attention

    def build(self, inputs_shape, memory_shape=None):
        width = inputs_shape[-1]
        self._self_attention_norm = self._make_norm("self_attention_norm")
        self._self_attention_norm.build(inputs_shape)
        self._self_attention = self._make_attention(
            width, "self_attention", rotary=self.use_rotary_embedding
        )
        self._self_attention.build(inputs_shape, inputs_shape)
        self._self_attention_dropout = self._make_dropout("self_attention_dropout")
        if self.use_cross_attention:
            memory_shape = inputs_shape if memory_shape is None else memory_shape
            self._cross_attention_norm = self._make_norm("cross_attention_norm")
            self._cross_attention_norm.build(inputs_shape)
            self._cross_attention = self._make_attention(width, "cross_attention")
            self._cross_attention.build(inputs_shape, memory_shape)
            self._cross_attention_dropout = self._make_dropout("cross_attention_dropout")
        self._feed_forward_norm = self._make_norm("feed_forward_norm")
        self._feed_forward_norm.build(inputs_shape)
        self._feed_forward = self._make_feed_forward(inputs_shape)
        self._feed_forward_dropout = self._make_dropout("feed_forward_dropout")
        self.built = True

    def init_cache(self, batch_size, max_length, memory=None, dtype=None):
        """A fresh cache for this layer.

        Args:
            batch_size: int or scalar int tensor `B`.
            max_length: int. Self-attention cache length `T_max`.
            memory: float tensor `(B, S, D)`; required with cross-attention.
            dtype: cache dtype; defaults to the layer's compute dtype.

        Returns:
            dict of batch-major tensors: `"self_key"`, `"self_value"`
            `(B, T_max, N, H)` zeros, and with cross-attention `"cross_key"`,
            `"cross_value"` `(B, S, N, H)` projected from `memory`.
        """
        dtype = dtype or self.compute_dtype
        attention = self._self_attention
        shape = (batch_size, max_length, attention.num_heads, attention.key_dim)
        cache = {"self_key": ops.zeros(shape, dtype), "self_value": ops.zeros(shape, dtype)}
        if self.use_cross_attention:
            if memory is None:
                raise ValueError("init_cache needs memory when use_cross_attention=True.")
            projected = self._cross_attention.compute_cache(memory)
            cache["cross_key"], cache["cross_value"] = projected["key"], projected["value"]
        return cache

    def call(
        self,
        inputs,
        memory=None,
        padding_mask=None,
        memory_mask=None,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        training=None,
    ):
        if cache is not None and cache_index is None:
            raise ValueError("cache_index is required with a cache.")
        if cache is not None and return_attention_scores:
            raise ValueError("return_attention_scores is not supported with a cache.")
        if self.use_cross_attention and memory is None and cache is None:
            raise ValueError("memory is required when use_cross_attention=True.")

        x, new_cache, scores = self._self_attention_step(
            inputs, padding_mask, cache, cache_index, return_attention_scores, training
        )
        if self.use_cross_attention:
            x, cross_scores = self._cross_attention_step(
                x, memory, memory_mask, cache, return_attention_scores, training
            )
            if return_attention_scores:
                scores["cross_attention"] = cross_scores  # (B, N, T, S)
        x, _ = self._residual(
            x,
            self._feed_forward_norm,
            self._feed_forward_dropout,
            lambda y: self._feed_forward_call(self._feed_forward, y, padding_mask, training),
            training,
        )
        if cache is not None:
            return x, new_cache  # (B, T, D), cache
        if return_attention_scores:
            return x, scores  # (B, T, D), {name: (B, N, T, S)}
        return x  # (B, T, D)

    def _self_attention_step(
        self, inputs, padding_mask, cache, cache_index, return_attention_scores, training
    ):
        """The causal self-attention block: `(x, updated cache or None, scores dict)`."""
        if cache is None:
            self_mask = masks_lib.self_attention_mask(
                ops.shape(inputs)[1], padding_mask=padding_mask, causal=True
            )  # (B, T, T)

            def self_block(y):
                return self._self_attention(
                    y,
                    y,
                    attention_mask=self_mask,
                    return_attention_scores=return_attention_scores,
                    training=training,
                )
        else:

            def self_block(y):
                output, updated = self._self_attention(
                    y,
                    y,
                    cache={"key": cache["self_key"], "value": cache["self_value"]},
                    cache_update_index=cache_index,
                    use_causal_mask=True,  # rectangular (T, T_max) from cache_index
                    training=training,
                )
                return output, updated

        x, extra = self._residual(
            inputs, self._self_attention_norm, self._self_attention_dropout, self_block, training
        )
        new_cache, scores = None, {}
        if cache is not None:
            new_cache = dict(cache)
            new_cache["self_key"], new_cache["self_value"] = extra[0]["key"], extra[0]["value"]
        elif return_attention_scores:
            scores["self_attention"] = extra[0]  # (B, N, T, T)
        return x, new_cache, scores

    def _cross_attention_step(self, x, memory, memory_mask, cache, return_scores, training):
        """The cross-attention block: `(x, scores (B, N, T, S) or None)`."""
        cross_mask = None
        if memory_mask is not None:
            cross_mask = masks_lib.key_padding_attention_mask(memory_mask)  # (B, 1, S)
        if cache is None:
            static = None
        else:
            static = {"key": cache["cross_key"], "value": cache["cross_value"]}

        def cross_block(y):
            output = self._cross_attention(
                y,
                memory,
                attention_mask=cross_mask,
                cache=static,
                return_attention_scores=return_scores,
                training=training,
            )
            return output[0] if static is not None else output

        x, extra = self._residual(
            x,
            self._cross_attention_norm,
            self._cross_attention_dropout,
            cross_block,
            training,
        )
        return x, (extra[0] if return_scores else None)

    def get_config(self):
        config = super().get_config()
        config.update({"use_cross_attention": self.use_cross_attention})
        return config
