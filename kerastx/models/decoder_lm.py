"""Decoder-only Transformer language model with cached incremental decoding."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import _common
from kerastx.layers import masks as masks_lib
from kerastx.layers.decoder_layer import DecoderLayer
from kerastx.layers.token_embedding import TokenEmbedding
from kerastx.models import _base


@keras.saving.register_keras_serializable(package="kerastx")
class DecoderLM(_base.TransformerModelBase):
    """Decoder-only (causal) Transformer returning float32 next-token logits.

    Same blocks as the decoder of `Seq2SeqTransformer` without cross-attention. Parameter
    count (sinusoidal, LayerNorm, relu/gelu, no MoE): `L (A + FF + 2N) + 2N + V D + V`
    with tied embeddings (`+ D V` untied), `A = 4 (D^2 + D)`, `FF = 2 D F + F + D`,
    `N = 2 D` (the final `2N` with pre-norm only).

    Args:
        vocab_size: int. `V` (from the data).
        num_layers: int. Decoder layers. Defaults to 6.
        tie_embeddings: bool. Tie the input embedding and the output projection.
            Defaults to True.
        **kwargs: the arguments shared by every kerastx model (`d_model`, `num_heads`,
            `ffn_dim`, ...; see `Seq2SeqTransformer`), and `keras.Model`'s `name`,
            `dtype`.

    Call arguments:
        inputs: dict with `"token_ids"` `(B, T)` int32 (0 = padding) and, with a
            condition, `"condition"` `(B,)` int or `(B, C)` float.
        training: bool. Enables dropout.

    Returns:
        float32 logits `(B, T, V)`.

    Example:

    >>> model = DecoderLM(100, d_model=32, num_heads=4, num_layers=2, ffn_dim=64)
    >>> logits = model({"token_ids": ids})                      # (B, T, 100)
    >>> cache = model.init_cache(batch_size=B, max_length=16)
    >>> logits, cache = model.decode_step(ids[:, 0], cache, 0)  # (B, 100)
    """

    def __init__(self, vocab_size, *, num_layers=6, tie_embeddings=True, **kwargs):
        _common.check_int("vocab_size", vocab_size)
        _common.check_int("num_layers", num_layers)
        _common.check_bool("tie_embeddings", tie_embeddings)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.tie_embeddings = tie_embeddings

    def build(self, inputs_shape=None):
        self.token_embedding = TokenEmbedding(
            self.vocab_size,
            self.d_model,
            tie_weights=self.tie_embeddings,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build()
        self.positions = self._make_positions("positions")
        self.embedding_dropout = self._make_dropout("embedding_dropout")
        self._condition = self._make_condition()
        self.decoder_layers = self._make_layers(
            DecoderLayer,
            self.num_layers,
            "decoder_layer",
            (None, None, self.d_model),
            use_cross_attention=False,
        )
        self.final_norm = self._make_final_norm("final_norm")
        self.built = True

    def _transformer_layers(self):
        return self.decoder_layers

    def call(self, inputs, training=False):
        token_ids = inputs["token_ids"]
        condition = self._condition_vector(inputs.get("condition"))
        padding = masks_lib.padding_mask(token_ids)  # (B, T)
        x = self._embed(
            self.token_embedding,
            self.positions,
            self.embedding_dropout,
            token_ids,
            condition=condition,
            training=training,
        )
        for layer in self.decoder_layers:
            x = layer(x, padding_mask=padding, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return self.token_embedding(x, reverse=True)  # (B, T, V) float32

    def init_cache(self, batch_size, max_length, condition=None):
        """Builds an empty decoding cache.

        Args:
            batch_size: int or scalar int tensor `B`.
            max_length: int. Steps the cache holds (`T_max`).
            condition: the condition (`(B,)` ids or `(B, C)` floats) if the model has one.

        Returns:
            dict of batch-major tensors: `"layers"`, one dict per layer with `"self_key"`,
            `"self_value"` `(B, T_max, N, H)` zeros; with a condition, `"condition"`
            `(B, D)`.
        """
        self._ensure_built()
        self._check_cache_length(max_length)
        cache = {
            "layers": [layer.init_cache(batch_size, max_length) for layer in self.decoder_layers]
        }
        condition = self._condition_vector(condition)
        if condition is not None:
            cache["condition"] = condition
        return cache

    def decode_step(self, token_ids, cache, index, training=False):
        """Decodes one position; as `Seq2SeqTransformer.decode_step`.

        Args:
            token_ids: int tensor `(B,)` at position `index`.
            cache: dict from `init_cache` or a previous step.
            index: int or scalar int32 tensor.
            training: bool. Defaults to False.

        Returns:
            `(logits (B, V) float32, cache)`.
        """
        index = ops.cast(index, "int32")
        ids = ops.cast(token_ids, "int32")[:, None]  # (B, 1)
        x = self._embed(
            self.token_embedding,
            self.positions,
            self.embedding_dropout,
            ids,
            start_index=index,
            condition=cache.get("condition"),
            training=training,
        )
        padding = masks_lib.padding_mask(ids)
        layers = []
        for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
            x, layer_cache = layer(
                x, padding_mask=padding, cache=layer_cache, cache_index=index, training=training
            )
            layers.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.token_embedding(x, reverse=True)[:, 0, :]  # (B, V) float32
        return logits, {**cache, "layers": layers}

    def get_config(self):
        config = super().get_config()
        config.update(self._base_config())
        config.update(
            {
                "vocab_size": self.vocab_size,
                "num_layers": self.num_layers,
                "tie_embeddings": self.tie_embeddings,
            }
        )
        return config
