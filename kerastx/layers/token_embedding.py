"""Token embedding that also projects hidden states back to vocabulary logits."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import _common


@keras.saving.register_keras_serializable(package="kerastx")
class TokenEmbedding(keras.layers.Layer):
    """Token lookup `(B, T) -> (B, T, D)` and output logits `(B, T, D) -> (B, T, V)`.

    With `tie_weights=True` the logits use the embedding matrix itself
    (`logits = h E^T + b`, Press & Wolf 2017); otherwise a separate `(D, V)` kernel.
    Both are one 2-D matmul over the flattened positions, forward and backward, so the
    tied projection costs what an untied dense layer costs.
    Logits are computed and returned in float32 (the hidden states are cast up), as
    recommended for the final layer under mixed precision.

    Args:
        vocab_size: int. `V`.
        embedding_dim: int. `D`.
        tie_weights: bool. Share the embedding matrix with the output projection.
            Defaults to True.
        use_output_bias: bool. A `(V,)` bias on the logits. Defaults to True.
        embeddings_initializer: initializer of the `(V, D)` matrix. Defaults to
            `RandomNormal(stddev=D ** -0.5)` (unit-variance rows after the usual
            `sqrt(D)` scaling).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: int tensor `(B, T)` of ids, or with `reverse=True` a float tensor
            `(B, T, D)`.
        reverse: bool. Project hidden states to logits. Defaults to False.

    Returns:
        `(B, T, D)` embeddings in the compute dtype, or `(B, T, V)` float32 logits.

    Example:

    >>> embedding = TokenEmbedding(vocab_size=100, embedding_dim=8)
    >>> h = embedding(keras.ops.ones((2, 5), "int32"))   # (2, 5, 8)
    >>> logits = embedding(h, reverse=True)               # (2, 5, 100) float32
    """

    def __init__(
        self,
        vocab_size,
        embedding_dim,
        tie_weights=True,
        use_output_bias=True,
        embeddings_initializer=None,
        **kwargs,
    ):
        _common.check_int("vocab_size", vocab_size)
        _common.check_int("embedding_dim", embedding_dim)
        _common.check_bool("tie_weights", tie_weights)
        _common.check_bool("use_output_bias", use_output_bias)
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.tie_weights = tie_weights
        self.use_output_bias = use_output_bias
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.RandomNormal(stddev=embedding_dim**-0.5)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, inputs_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.embedding_dim),
            initializer=self.embeddings_initializer,
            autocast=False,  # the logits read it in float32; lookups cast the rows
        )
        self.output_kernel = None
        if not self.tie_weights:
            self.output_kernel = self.add_weight(
                name="output_kernel",
                shape=(self.embedding_dim, self.vocab_size),
                initializer="glorot_uniform",
                autocast=False,
            )
        self.output_bias = None
        if self.use_output_bias:
            self.output_bias = self.add_weight(
                name="output_bias", shape=(self.vocab_size,), initializer="zeros", autocast=False
            )
        self.built = True

    def call(self, inputs, reverse=False):
        if not reverse:
            ids = ops.cast(inputs, "int32")
            rows = ops.take(self.embeddings, ids, axis=0)  # (B, T, D) float32
            return ops.cast(rows, self.compute_dtype)
        hidden = ops.cast(inputs, "float32")
        # One 2-D matmul over the flattened positions, tied or not: `(B*T, D) x (D, V)`.
        # Its gradients are 2-D matmuls too. Not `einsum("...d,vd->...v")`: TensorFlow's
        # gradient of that einsum builds a (B, T, V, D) tensor before summing over the
        # positions (33 GB at 4096 tokens, V 8k, D 256; issue 11). Measured at that size,
        # forward + backward: this form, `tf.matmul(transpose_b=True)` and the untied
        # kernel take the same time (within 4 %, the tied ones slightly faster).
        kernel = ops.transpose(self.embeddings) if self.tie_weights else self.output_kernel
        flat = ops.reshape(hidden, (-1, self.embedding_dim))  # (B*T, D)
        logits = ops.matmul(flat, kernel)  # (B*T, V)
        if self.output_bias is not None:
            logits = logits + self.output_bias
        shape = ops.shape(hidden)[:-1] + (self.vocab_size,)
        return ops.reshape(logits, shape)  # (B, T, V) float32

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            return keras.KerasTensor(tuple(inputs.shape[:-1]) + (self.vocab_size,), "float32")
        return keras.KerasTensor(tuple(inputs.shape) + (self.embedding_dim,), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "tie_weights": self.tie_weights,
                "use_output_bias": self.use_output_bias,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config
