"""Learned absolute position embedding."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerastx")
class PositionEmbedding(keras.layers.Layer):
    """A learned table of `max_length` position vectors.

    Args:
        max_length: int. Number of positions in the table; positions at or beyond it
            cannot be encoded (an eager call checks the length; inside a compiled
            graph an out-of-range `start_index` is the caller's error).
        initializer: str or `keras.initializers.Initializer`. Table initializer.
            Defaults to `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(B, T, D)`; only `T` and `D` are used.
        start_index: int or scalar int tensor. Position of the first step. Defaults
            to 0.

    Returns:
        float tensor `(1, T, D)`: rows `start_index .. start_index + T - 1`.

    Example:

    >>> x = keras.random.normal((2, 5, 8))
    >>> x = x + PositionEmbedding(max_length=16)(x)
    """

    def __init__(self, max_length, initializer="glorot_uniform", **kwargs):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
            raise ValueError(
                f"max_length must be a positive integer. Received: max_length={max_length}"
            )
        super().__init__(**kwargs)
        self.max_length = max_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        if width is None:
            raise ValueError(
                f"PositionEmbedding needs a known feature width. Received: {inputs_shape}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, width),
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        static = isinstance(length, int) and isinstance(start_index, int)
        if static and start_index + length > self.max_length:
            raise ValueError(
                f"Positions {start_index}..{start_index + length - 1} exceed "
                f"max_length={self.max_length}."
            )
        width = self.embeddings.shape[-1]
        rows = ops.slice(self.embeddings, [ops.cast(start_index, "int32"), 0], [length, width])
        return ops.cast(rows[None, :, :], self.compute_dtype)

    def compute_output_shape(self, inputs_shape):
        return (1, inputs_shape[1], inputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
