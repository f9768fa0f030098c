"""Rotary position embedding (RoPE, Su et al., 2021)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerastx")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates query/key features by an angle proportional to their position.

    The feature axis (width `H`, even) is split in halves `x1 = x[..., :H/2]` and
    `x2 = x[..., H/2:]`; pair `(x1[i], x2[i])` at position `p` is rotated by the angle
    `p * w ** (-2i / H)` (`w = max_wavelength`):
    `out1 = x1 cos - x2 sin`, `out2 = x2 cos + x1 sin`. The dot product of a rotated
    query and key then depends only on their distance. Angles are computed in float32.

    Args:
        max_wavelength: float. Defaults to 10000.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(B, T, N, H)` (per-head projections) or `(B, T, H)`.
        start_index: int or scalar int tensor. Position of the first step. Defaults
            to 0.

    Returns:
        float tensor of the same shape and dtype as `inputs`.

    Example:

    >>> q = keras.random.normal((2, 5, 4, 16))  # (B, T, N, H)
    >>> q = RotaryEmbedding()(q)
    """

    def __init__(self, max_wavelength=10000.0, **kwargs):
        if not isinstance(max_wavelength, (int, float)) or max_wavelength <= 0:
            raise ValueError(
                "max_wavelength must be a positive number. "
                f"Received: max_wavelength={max_wavelength}"
            )
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        if width is None or width % 2:
            raise ValueError(
                "RotaryEmbedding needs an even, known feature width. "
                f"Received: inputs_shape={inputs_shape}"
            )
        self.built = True

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        half = inputs.shape[-1] // 2
        positions = ops.cast(ops.arange(length) + ops.cast(start_index, "int32"), "float32")
        exponents = ops.arange(half, dtype="float32") * (2.0 / inputs.shape[-1])
        inverse_frequencies = ops.power(float(self.max_wavelength), -exponents)
        angles = positions[:, None] * inverse_frequencies[None, :]  # (T, H/2)
        angles = ops.concatenate([angles, angles], axis=-1)  # (T, H)
        # Broadcast over batch (and heads for rank-4 inputs).
        shape = (
            (1, -1, 1, inputs.shape[-1]) if len(inputs.shape) == 4 else (1, -1, inputs.shape[-1])
        )
        cos = ops.reshape(ops.cast(ops.cos(angles), inputs.dtype), shape)
        sin = ops.reshape(ops.cast(ops.sin(angles), inputs.dtype), shape)
        x1, x2 = inputs[..., :half], inputs[..., half:]
        rotated = ops.concatenate([-x2, x1], axis=-1)
        return inputs * cos + rotated * sin

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
