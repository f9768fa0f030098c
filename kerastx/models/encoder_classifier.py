"""Transformer encoder with pooling and a classification head."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import _common
from kerastx.layers import masks as masks_lib
from kerastx.layers.dropout import Dropout
from kerastx.layers.encoder_layer import EncoderLayer
from kerastx.layers.token_embedding import TokenEmbedding
from kerastx.models import _base

POOLINGS = ("mean", "first", "max")


@keras.saving.register_keras_serializable(package="kerastx")
class EncoderClassifier(_base.TransformerModelBase):
    """Transformer encoder, pooled over real tokens, then a float32 linear head.

    The condition, if any, is added to the encoder input embeddings at every position.

    Args:
        vocab_size: int. `V` (from the data).
        num_classes: int. Output classes (from the data).
        num_layers: int. Encoder layers. Defaults to 6.
        pooling: str. `"mean"` (average over real tokens), `"first"` (the first token)
            or `"max"` (feature-wise max over real tokens). Defaults to `"mean"`.
        **kwargs: the arguments shared by every kerastx model (`d_model`, `num_heads`,
            `ffn_dim`, ...; see `Seq2SeqTransformer`), and `keras.Model`'s `name`,
            `dtype`.

    Call arguments:
        inputs: dict with `"source_ids"` `(B, S)` int32 (0 = padding) and, with a
            condition, `"condition"` `(B,)` int or `(B, C)` float.
        training: bool. Enables dropout.

    Returns:
        float32 logits `(B, num_classes)`.

    Example:

    >>> model = EncoderClassifier(100, 3, d_model=32, num_heads=4, num_layers=2, ffn_dim=64)
    >>> logits = model({"source_ids": ids})                      # (B, 3)
    """

    def __init__(self, vocab_size, num_classes, *, num_layers=6, pooling="mean", **kwargs):
        _common.check_int("vocab_size", vocab_size)
        _common.check_int("num_classes", num_classes)
        _common.check_int("num_layers", num_layers)
        _common.check_choice("pooling", pooling, POOLINGS)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.pooling = pooling

    def build(self, inputs_shape=None):
        self.token_embedding = TokenEmbedding(
            self.vocab_size,
            self.d_model,
            use_output_bias=False,  # the head is separate
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build()
        self.positions = self._make_positions("positions")
        self.embedding_dropout = self._make_dropout("embedding_dropout")
        self._condition = self._make_condition()
        self.encoder_layers = self._make_layers(
            EncoderLayer, self.num_layers, "encoder_layer", (None, None, self.d_model)
        )
        self.final_norm = self._make_final_norm("final_norm")
        self.pooled_dropout = Dropout(self.dropout, dtype="float32", name="pooled_dropout")
        # float32 head: logits in float32 under mixed precision.
        self.head = keras.layers.Dense(self.num_classes, dtype="float32", name="head")
        self.head.build((None, self.d_model))
        self.built = True

    def _transformer_layers(self):
        return self.encoder_layers

    def call(self, inputs, training=False):
        source_ids = inputs["source_ids"]
        condition = self._condition_vector(inputs.get("condition"))
        padding = masks_lib.padding_mask(source_ids)  # (B, S)
        x = self._embed(
            self.token_embedding,
            self.positions,
            self.embedding_dropout,
            source_ids,
            condition=condition,
            training=training,
        )
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=padding, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = ops.cast(x, "float32")
        real = ops.cast(padding, "float32")[:, :, None]  # (B, S, 1)
        if self.pooling == "first":
            pooled = x[:, 0, :]
        elif self.pooling == "max":
            pooled = ops.max(ops.where(real > 0, x, -1e9), axis=1)
        else:
            pooled = ops.sum(x * real, axis=1) / ops.maximum(ops.sum(real, axis=1), 1.0)
        pooled = self.pooled_dropout(pooled, training=training)  # (B, D)
        return self.head(pooled)  # (B, num_classes) float32

    def get_config(self):
        config = super().get_config()
        config.update(self._base_config())
        config.update(
            {
                "vocab_size": self.vocab_size,
                "num_classes": self.num_classes,
                "num_layers": self.num_layers,
                "pooling": self.pooling,
            }
        )
        return config
