"""Position-wise feed-forward block: relu, gelu or SwiGLU."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers.dropout import Dropout

ACTIVATIONS = ("relu", "gelu", "swiglu")


@keras.saving.register_keras_serializable(package="kerastx")
class FeedForward(keras.layers.Layer):
    """Two projections around a nonlinearity, applied at every position.

    - `relu` / `gelu`: `W2 act(W1 x + b1) + b2`, with `W1: (D, F)` and `W2: (F, D)`.
    - `swiglu` (Shazeer, 2020): `W2 (silu(Wg x) * (Wu x))`. The gate and up projections
      are one fused `(D, 2F)` matrix (one matmul instead of two), so SwiGLU has
      `3 D F` kernel weights against `2 D F` for relu/gelu.

    Args:
        hidden_dim: int. Inner width `F`.
        activation: str. One of `"relu"`, `"gelu"`, `"swiglu"`. Defaults to `"relu"`.
        dropout: float. Dropout on the inner activations. Defaults to 0.
        use_bias: bool. Biases in both projections. Defaults to True.
        kernel_initializer: initializer for the kernels. Defaults to
            `"glorot_uniform"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(B, T, D)`.
        training: bool. Enables dropout.

    Returns:
        float tensor `(B, T, D)`.

    Example:

    >>> y = FeedForward(hidden_dim=32, activation="swiglu")(keras.random.normal((2, 5, 8)))
    """

    def __init__(
        self,
        hidden_dim,
        activation="relu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        if not isinstance(hidden_dim, int) or isinstance(hidden_dim, bool) or hidden_dim <= 0:
            raise ValueError(
                f"hidden_dim must be a positive integer. Received: hidden_dim={hidden_dim}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}. Received: activation={activation!r}"
            )
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1). Received: dropout={dropout}")
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _initializer(self):
        # A fresh initializer per kernel: one unseeded instance repeats its values.
        return self.kernel_initializer.__class__.from_config(self.kernel_initializer.get_config())

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        inner = 2 * self.hidden_dim if self.activation == "swiglu" else self.hidden_dim
        self._inner_dense = keras.layers.Dense(
            inner,
            use_bias=self.use_bias,
            kernel_initializer=self._initializer(),
            dtype=self.dtype_policy,
            name="inner_dense",
        )
        self._inner_dense.build(inputs_shape)
        self._dropout_layer = Dropout(self.dropout, dtype=self.dtype_policy)
        self._output_dense = keras.layers.Dense(
            width,
            use_bias=self.use_bias,
            kernel_initializer=self._initializer(),
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self._output_dense.build(tuple(inputs_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def call(self, inputs, training=None):
        hidden = self._inner_dense(inputs)  # (B, T, F) or (B, T, 2F)
        if self.activation == "swiglu":
            gate, up = ops.split(hidden, 2, axis=-1)
            hidden = ops.silu(gate) * up
        elif self.activation == "gelu":
            hidden = ops.gelu(hidden, approximate=False)
        else:
            hidden = ops.relu(hidden)
        if self.dropout > 0.0:
            hidden = self._dropout_layer(hidden, training=training)
        return self._output_dense(hidden)  # (B, T, D)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
