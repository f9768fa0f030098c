"""Multi-head attention with a key/value cache for incremental decoding."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import masks as masks_lib
from kerastx.layers.rotary_embedding import RotaryEmbedding

# Fused QKV projection: measured, skipped. Forward + backward of the projections for a
# (64, 64, D) batch, one (D, 3, N, H) einsum against three (D, N, H) ones, on the 2-core
# CPU runner (best of 5 x 10 runs, two sessions, load average ~3 from parallel jobs):
#   D=256: graph 59.7 / 32.3 ms fused vs 64.6 / 33.6 separate; XLA 69.4 / 34.0 vs 72.6 / 36.1
#   D=512: graph 158 / 126 ms fused vs 121 / 205 separate;     XLA 132 / 235 vs 244 / 245
# At most 4-8 % at D=256, and at D=512 the sign flips between sessions: no gain that
# stands out of the noise (no GPU was available to measure). Three EinsumDense layers
# keep the weight layout of `keras.layers.MultiHeadAttention` (same weights, same outputs).


@keras.saving.register_keras_serializable(package="kerastx")
class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` with a key/value cache and optional RoPE.

    Same weights and, without a cache, the same outputs as the Keras layer; the softmax
    always runs in float32 (the attention logits are cast up under mixed precision) and
    masks follow `kerastx.layers.masks` (`True` = may attend). Keras implicit masks
    (`_keras_mask`) are not read: pass `attention_mask` explicitly.

    The layer runs in one of three modes:

    - `cache=None`: ordinary attention over `value`/`key`.
    - `cache` given, `cache_update_index=None` (static cache, cross-attention): the keys
      and values in `cache` are used as they are; `value`/`key` may be omitted.
      Build that cache once per source with `compute_cache(memory)`.
    - `cache` and `cache_update_index` given (growing self-attention cache): the keys and
      values of `query`'s `T_q` steps are projected, written into the cache at
      `cache_update_index`, and the queries attend the whole cache; pass
      `use_causal_mask=True` to block the unwritten (future) slots.

    Args:
        num_heads: int. Number of attention heads `N`.
        key_dim: int. Width `H` of each head for queries and keys.
        value_dim: int or None. Width of each head for values; defaults to `key_dim`.
        dropout: float. Dropout rate on the attention probabilities. Defaults to 0.
        use_bias: bool. Biases in the projections. Defaults to True.
        use_rotary_embedding: bool. Rotate queries and keys with `RotaryEmbedding`
            (self-attention only: queries and keys must share positions). Defaults to
            False.
        rotary_max_wavelength: float. RoPE wavelength. Defaults to 10000.
        **kwargs: the other `keras.layers.MultiHeadAttention` arguments (initializers,
            regularizers, `seed`, `name`, `dtype`, ...).

    Call arguments:
        query: float tensor `(B, T, D)`.
        value: float tensor `(B, S, D)`; optional with a static cache, and for
            self-attention with a growing cache pass `query` again.
        key: float tensor `(B, S, D)` or None (then `value`).
        attention_mask: bool tensor broadcastable to `(B, T, S)` (with a cache, `S` is
            the cache length), `True` = may attend; or None.
        cache: dict `{"key": (B, S, N, H), "value": (B, S, N, H)}` or None.
        cache_update_index: int or scalar int tensor: the position of `query`'s first
            step, where its keys/values are written (and its RoPE position). None for a
            static cache or no cache.
        use_causal_mask: bool. Merge the causal mask (rectangular with a cache).
        return_attention_scores: bool. Also return the probabilities `(B, N, T, S)`.
        training: bool. Enables attention dropout.

    Returns:
        `outputs (B, T, D)`; with `return_attention_scores`, `(outputs, scores)`; with a
        cache, `(outputs, cache)` (the updated cache; the same one if static).

    Example:

    >>> mha = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = keras.random.normal((3, 5, 8))
    >>> y = mha(x, x, use_causal_mask=True)                        # (3, 5, 8)
    >>> cache = {"key": keras.ops.zeros((3, 5, 2, 4)), "value": keras.ops.zeros((3, 5, 2, 4))}
    >>> y0, cache = mha(x[:, :1], x[:, :1], cache=cache, cache_update_index=0,
    ...                 use_causal_mask=True)                       # (3, 1, 8)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        use_rotary_embedding=False,
        rotary_max_wavelength=10000.0,
        **kwargs,
    ):
        _check_positive_int("num_heads", num_heads)
        _check_positive_int("key_dim", key_dim)
        if value_dim is not None:
            _check_positive_int("value_dim", value_dim)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1). Received: dropout={dropout}")
        if not isinstance(use_rotary_embedding, bool):
            raise ValueError(
                "use_rotary_embedding must be a bool. "
                f"Received: use_rotary_embedding={use_rotary_embedding}"
            )
        if use_rotary_embedding and key_dim % 2:
            raise ValueError(
                f"use_rotary_embedding needs an even key_dim. Received: key_dim={key_dim}"
            )
        super().__init__(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            **kwargs,
        )
        self.use_rotary_embedding = use_rotary_embedding
        self.rotary_max_wavelength = rotary_max_wavelength
        self._rotary = None

    def build(self, query_shape, value_shape=None, key_shape=None):
        if value_shape is None:
            value_shape = query_shape
        super().build(query_shape, value_shape, key_shape)
        if self.use_rotary_embedding:
            self._rotary = RotaryEmbedding(
                max_wavelength=self.rotary_max_wavelength,
                dtype=self.dtype_policy,
                name="rotary_embedding",
            )
            self._rotary.build((None, None, self._num_heads, self._key_dim))

    def compute_cache(self, value, key=None):
        """Projects keys and values once, for a static (cross-attention) cache.

        Args:
            value: float tensor `(B, S, D)`.
            key: float tensor `(B, S, D)` or None (then `value`).

        Returns:
            dict `{"key": (B, S, N, H), "value": (B, S, N, H)}` in the compute dtype.
        """
        key = value if key is None else key
        return {"key": self._key_dense(key), "value": self._value_dense(value)}

    def call(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        static_cache = cache is not None and cache_update_index is None
        if value is None and not static_cache:
            raise ValueError("value is required unless a static cache is given.")
        if cache is None and cache_update_index is not None:
            raise ValueError(
                "cache_update_index needs a cache. "
                f"Received: cache=None, cache_update_index={cache_update_index}"
            )
        key = value if key is None else key
        start = 0 if cache_update_index is None else ops.cast(cache_update_index, "int32")

        query = self._query_dense(query)  # (B, T, N, H)
        if self._rotary is not None:
            query = self._rotary(query, start_index=start)
        if static_cache:
            key, value = cache["key"], cache["value"]  # (B, S, N, H)
        else:
            key = self._key_dense(key)  # (B, S*, N, H)
            value = self._value_dense(value)
            if self._rotary is not None:
                key = self._rotary(key, start_index=start)
            if cache is not None:
                key = ops.slice_update(cache["key"], [0, start, 0, 0], key)
                value = ops.slice_update(cache["value"], [0, start, 0, 0], value)
                cache = {"key": key, "value": value}  # (B, T_max, N, H)

        if use_causal_mask:
            causal = masks_lib.causal_mask(ops.shape(query)[1], ops.shape(key)[1], start)
            attention_mask = masks_lib.merge_masks(attention_mask, causal)
        outputs, scores = self._compute_attention(
            query, key, value, attention_mask, training, return_attention_scores
        )
        outputs = self._output_dense(outputs)  # (B, T, D)
        if cache is not None:
            return outputs, cache
        if return_attention_scores:
            return outputs, scores
        return outputs

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        # Same algebra as the Keras layer (scaled query, einsum, masked softmax that
        # zeroes blocked keys, dropout, einsum), with the softmax in float32.
        if use_causal_mask:
            causal = masks_lib.causal_mask(ops.shape(query)[1], ops.shape(key)[1])
            attention_mask = masks_lib.merge_masks(attention_mask, causal)
        query = ops.multiply(query, ops.cast(self._inverse_sqrt_key_dim, query.dtype))
        scores = ops.einsum(self._dot_product_equation, key, query)  # (B, N, T, S)
        scores = ops.cast(scores, "float32")
        if attention_mask is not None:
            mask = ops.cast(attention_mask, "bool")
            while len(mask.shape) < len(scores.shape):
                mask = ops.expand_dims(mask, axis=-3)  # head axis
            probabilities = ops.softmax(ops.where(mask, scores, -1e9), axis=-1)
            # A fully blocked row gives zeros, not a uniform average (as Keras does).
            probabilities = ops.where(mask, probabilities, 0.0)
        else:
            probabilities = ops.softmax(scores, axis=-1)
        dropped = ops.cast(probabilities, value.dtype)
        if self._dropout > 0.0:
            dropped = self._dropout_layer(dropped, training=training)
        outputs = ops.einsum(self._combine_equation, dropped, value)  # (B, T, N, H)
        return outputs, probabilities  # the scores returned stay float32

    def compute_output_spec(
        self,
        query,
        value=None,
        key=None,
        attention_mask=None,
        cache=None,
        cache_update_index=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        output_shape = tuple(query.shape)
        if self._output_shape:
            output_shape = output_shape[:-1] + tuple(self._output_shape)
        outputs = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if cache is not None:
            cache_spec = {
                name: keras.KerasTensor(tensor.shape, dtype=self.compute_dtype)
                for name, tensor in cache.items()
            }
            return outputs, cache_spec
        if return_attention_scores:
            length = value.shape[1] if value is not None else None
            scores = keras.KerasTensor(
                (query.shape[0], self._num_heads, query.shape[1], length), dtype="float32"
            )
            return outputs, scores
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_rotary_embedding": self.use_rotary_embedding,
                "rotary_max_wavelength": self.rotary_max_wavelength,
            }
        )
        return config


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
