"""Fixed sinusoidal position encoding (Vaswani et al., 2017, section 3.5)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerastx")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Sinusoidal position encoding, as in "Attention Is All You Need".

    For position `p` and feature pair `i` of a `D`-wide model:
    `PE[p, 2i] = sin(p / w ** (2i / D))` and `PE[p, 2i + 1] = cos(p / w ** (2i / D))`
    with `w = max_wavelength`. The encoding is computed on the fly in float32 (no
    weights, no length limit) and returned in the layer's compute dtype, to be added to
    the token embeddings.

    Args:
        max_wavelength: float. The longest wavelength `w`. Defaults to 10000.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(B, T, D)`; only its length `T` and width `D` are used
            (`D` must be even).
        start_index: int or scalar int tensor. Position of the first step (the decoding
            index when one step is fed with a cache). Defaults to 0.

    Returns:
        float tensor `(1, T, D)` that broadcasts against `inputs`.

    Example:

    >>> x = keras.random.normal((2, 5, 8))
    >>> x = x + SinusoidalPositionEncoding()(x)
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
                "SinusoidalPositionEncoding needs an even, known feature width. "
                f"Received: inputs_shape={inputs_shape}"
            )
        self.built = True

    def call(self, inputs, start_index=0):
        length = ops.shape(inputs)[1]
        width = inputs.shape[-1]
        positions = ops.cast(ops.arange(length) + ops.cast(start_index, "int32"), "float32")
        exponents = ops.arange(0, width, 2, dtype="float32") / float(width)  # (D/2,)
        inverse_frequencies = ops.power(float(self.max_wavelength), -exponents)
        angles = positions[:, None] * inverse_frequencies[None, :]  # (T, D/2)
        # Interleave: sin at even features, cos at odd ones.
        encoding = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)  # (T, D/2, 2)
        encoding = ops.reshape(encoding, (length, width))
        return ops.cast(encoding[None, :, :], self.compute_dtype)

    def compute_output_shape(self, inputs_shape):
        return (1, inputs_shape[1], inputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
