"""Token-level cross-entropy with label smoothing, as a sum over real tokens.

The trainer divides the sum by the number of real target tokens of the whole global
batch (all replicas, all accumulated micro-batches), so the loss and its gradient do not
depend on how a batch is split across devices or micro-batches.
"""

from __future__ import annotations

import tensorflow as tf


def label_weights(labels: tf.Tensor, pad_id: int | None = 0) -> tf.Tensor:
    """float32 1.0 at the positions the loss counts (`labels != pad_id`; all of them when
    `pad_id` is None), 0.0 elsewhere."""
    if pad_id is None:
        return tf.ones(tf.shape(labels), tf.float32)
    return tf.cast(tf.not_equal(labels, pad_id), tf.float32)


def smoothed_cross_entropy_sum(
    labels: tf.Tensor, logits: tf.Tensor, smoothing: float, pad_id: int = 0
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sums label-smoothed cross-entropy over non-pad positions.

    The smoothed target puts `1 - smoothing` on the label and spreads `smoothing`
    uniformly over the whole vocabulary (as in Szegedy et al. and tensor2tensor).

    Args:
        labels: int tensor (B, T) or (B,). Target ids; `pad_id` positions are ignored.
        logits: float tensor (B, T, V) or (B, V).
        smoothing: float. Label smoothing in [0, 1).
        pad_id: int or None. Id ignored in the sum; None counts every position
            (classification).

    Returns:
        `(loss_sum, nll_sum, count)`: the smoothed loss summed over real positions, the
        plain negative log-likelihood summed likewise (for perplexity), and the number of
        real positions (float32), all scalars.
    """
    logits = tf.cast(logits, tf.float32)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    labels = tf.cast(labels, tf.int32)
    nll = -tf.gather(log_probs, labels, axis=-1, batch_dims=labels.shape.rank)
    if smoothing:
        uniform = -tf.reduce_mean(log_probs, axis=-1)
        loss = (1.0 - smoothing) * nll + smoothing * uniform
    else:
        loss = nll
    weights = label_weights(labels, pad_id)
    return (
        tf.reduce_sum(loss * weights),
        tf.reduce_sum(nll * weights),
        tf.reduce_sum(weights),
    )


def token_accuracy_counts(
    labels: tf.Tensor, logits: tf.Tensor, pad_id: int | None = 0
) -> tf.Tensor:
    """Number of non-pad positions whose argmax equals the label (float32 scalar)."""
    labels = tf.cast(labels, tf.int32)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, labels), tf.float32)
    return tf.reduce_sum(correct * label_weights(labels, pad_id))
