"""Layer normalization with a closed-form gradient on the TensorFlow backend."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerastx")
class LayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization`, with a faster gradient on TensorFlow.

    Same function, arguments, weights (`gamma`, `beta`) and float32 compute as the Keras
    layer. On the TensorFlow backend, normalizing over the last axis without RMS
    scaling, the backward pass is the closed-form layer-norm gradient
    (`kerastx.layers._tf_kernels.layer_norm`) instead of the one derived op by op from
    `moments`, `rsqrt` and the broadcasts: fewer passes over the activations, which
    matters on CPUs where a Transformer layer's norms cost about as much as its
    attention projections' bias and softmax work together. Values and gradients match
    the Keras layer to float32 rounding (tested).

    Args:
        **kwargs: the arguments of `keras.layers.LayerNormalization`.

    Call arguments:
        inputs: float tensor `(..., D)`.

    Returns:
        tensor `(..., D)` in the layer's compute dtype.
    """

    def build(self, input_shape):
        super().build(input_shape)
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        rank = len(input_shape)
        self._fast = (
            keras.backend.backend() == "tensorflow"
            and not self.rms_scaling
            and [a % rank for a in axes] == [rank - 1]
        )

    def call(self, inputs):
        if not self._fast:
            return super().call(inputs)
        from kerastx.layers import _tf_kernels

        outputs = _tf_kernels.layer_norm(inputs, self.gamma, self.beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)
