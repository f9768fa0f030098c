"""Mixture-of-experts feed-forward block with top-k routing and expert capacity."""

from __future__ import annotations

import math

import keras
from keras import ops

from kerastx.layers.feed_forward import ACTIVATIONS


@keras.saving.register_keras_serializable(package="kerastx")
class MixtureOfExperts(keras.layers.Layer):
    """Conditional feed-forward: a router sends each token to `top_k` of `E` experts.

    Routing (GShard / Switch Transformer style, all shapes static):

    1. A float32 router `W_r: (D, E)` gives probabilities `p = softmax(x W_r)` per token;
       each token picks its `top_k` experts. With `top_k > 1` the chosen probabilities
       are renormalised to sum to 1 and used as gates; with `top_k == 1` the gate is the
       probability itself (so the router learns through the task loss).
    2. Tokens are routed in groups: a group is one position `t` across the batch (the
       `B` tokens `x[:, t]`). Each expert takes at most
       `capacity = min(ceil(capacity_factor * top_k * n_t / E), n_t)` tokens of a group,
       `n_t` the number of real (unpadded) tokens in it. First choices are served before
       second choices, earlier batch rows first; an assignment beyond capacity is
       dropped (that expert's contribution is zero; the residual path carries the token).
       Per-position groups make routing independent of the sequence length and of
       padding (padded tokens are not routed and take no capacity), so cached decoding
       one position at a time routes exactly as the full pass does.
    3. Experts are `FeedForward`-shaped weights stacked on a leading `E` axis and applied
       to their `(T * capacity)` dispatched tokens with one batched einsum; the outputs
       are gathered back and summed with the gates.

    Losses (added with `add_loss` on every call, over real tokens):
    `aux_loss_weight * E * sum_e f_e P_e` (load balancing: `f_e` the share of
    assignments, before capacity, that chose expert `e`; `P_e` its mean probability;
    1.0 when balanced) and `z_loss_weight * mean(logsumexp(x W_r) ** 2)` (router z-loss).

    Counters: two non-trainable float32 scalars hold the last call's numbers, summed
    over the replicas of a distribution strategy: `tokens_routed` (token-expert
    assignments requested by real tokens, `top_k` per token) and `tokens_dropped`
    (assignments over capacity). They are variables, not Python attributes, so a
    trainer reads them after a `tf.function` step.

    Args:
        num_experts: int. Number of experts `E` (>= 2).
        hidden_dim: int. Inner width `F` of each expert.
        top_k: int. Experts per token, `1 <= top_k <= num_experts`. Defaults to 2.
        capacity_factor: float > 0. Slack over an even split. Defaults to 1.25.
        activation: str. `"relu"`, `"gelu"` or `"swiglu"` in each expert. Defaults to
            `"relu"`.
        use_bias: bool. Biases in the expert projections. Defaults to True.
        aux_loss_weight: float >= 0. Weight of the load-balancing loss. Defaults to 0.01.
        z_loss_weight: float >= 0. Weight of the router z-loss. Defaults to 0.001.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `(B, T, D)`.
        padding_mask: bool or int tensor `(B, T)`, 1 = real token; None = all real.
        training: bool. Unused (routing is the same in training and inference).

    Returns:
        float tensor `(B, T, D)`.

    Example:

    >>> moe = MixtureOfExperts(num_experts=4, hidden_dim=32, top_k=2)
    >>> y = moe(keras.random.normal((2, 5, 8)))
    >>> float(moe.tokens_dropped.value), len(moe.losses)
    """

    def __init__(
        self,
        num_experts,
        hidden_dim,
        top_k=2,
        capacity_factor=1.25,
        activation="relu",
        use_bias=True,
        aux_loss_weight=0.01,
        z_loss_weight=0.001,
        **kwargs,
    ):
        for name, value, low in (
            ("num_experts", num_experts, 2),
            ("hidden_dim", hidden_dim, 1),
            ("top_k", top_k, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value}")
        if top_k > num_experts:
            raise ValueError(
                "top_k must not exceed num_experts. "
                f"Received: top_k={top_k}, num_experts={num_experts}"
            )
        if not isinstance(capacity_factor, (int, float)) or capacity_factor <= 0:
            raise ValueError(
                "capacity_factor must be a positive number. "
                f"Received: capacity_factor={capacity_factor}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}. Received: activation={activation!r}"
            )
        for name, value in (("aux_loss_weight", aux_loss_weight), ("z_loss_weight", z_loss_weight)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0. Received: {name}={value}")
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.activation = activation
        self.use_bias = use_bias
        self.aux_loss_weight = aux_loss_weight
        self.z_loss_weight = z_loss_weight

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        experts, hidden = self.num_experts, self.hidden_dim
        inner = 2 * hidden if self.activation == "swiglu" else hidden
        # The router stays float32 under mixed precision.
        self._router = keras.layers.Dense(experts, use_bias=False, dtype="float32", name="router")
        self._router.build(inputs_shape)

        def glorot(fan_in, fan_out):
            # Glorot per expert: the stacked (E, in, out) shape would fold E into the fans.
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            return keras.initializers.RandomUniform(-limit, limit)

        self.inner_kernel = self.add_weight(
            name="inner_kernel", shape=(experts, width, inner), initializer=glorot(width, inner)
        )
        self.output_kernel = self.add_weight(
            name="output_kernel", shape=(experts, hidden, width), initializer=glorot(hidden, width)
        )
        self.inner_bias = self.output_bias = None
        if self.use_bias:
            self.inner_bias = self.add_weight(
                name="inner_bias", shape=(experts, inner), initializer="zeros"
            )
            self.output_bias = self.add_weight(
                name="output_bias", shape=(experts, width), initializer="zeros"
            )
        # Counters as synchronization="on_read" variables (like Keras metrics): a replica
        # assigns its own copy without a cross-replica merge_call (a merge_call in the
        # forward pass would interleave replicas and mix their `add_loss` lists), and a
        # read outside the replicas returns the sum over replicas.
        self.tokens_routed = self._counter("tokens_routed")
        self.tokens_dropped = self._counter("tokens_dropped")
        self.built = True

    def _counter(self, name):
        with keras.name_scope(self.name, caller=self):
            return keras.Variable(
                initializer="zeros",
                shape=(),
                dtype="float32",
                trainable=False,
                aggregation="sum",
                synchronization="on_read",
                name=name,
            )

    def route(self, inputs, padding_mask=None):
        """Computes the routing of a batch without running the experts.

        Args:
            inputs: float tensor `(B, T, D)`.
            padding_mask: bool or int tensor `(B, T)` or None.

        Returns:
            dict of tensors, choices on the leading axis `k`:
            `"logits"` `(B, T, E)` float32 router logits; `"probabilities"` `(B, T, E)`;
            `"experts"` `(k, B, T)` int32 chosen experts; `"gates"` `(k, B, T)` float32;
            `"positions"` `(k, B, T)` int32 slot in the expert's queue; `"assigned"`
            `(k, B, T)` float32, 1 for a real token's choice; `"kept"` `(k, B, T)`
            float32, 1 if it fit the capacity; `"capacity"` `(T,)` int32 per group;
            `"buffer"` the static (or traced) slots per expert and group.
        """
        shape = ops.shape(inputs)
        batch, length = shape[0], shape[1]
        experts, k = self.num_experts, self.top_k
        if padding_mask is None:
            valid = ops.ones((batch, length), "float32")
        else:
            valid = ops.cast(padding_mask, "float32")  # (B, T)

        logits = self._router(inputs)  # (B, T, E) float32
        probabilities = ops.softmax(logits, axis=-1)
        top_probabilities, top_experts = ops.top_k(probabilities, k)  # (B, T, k)
        if k > 1:
            top_probabilities = top_probabilities / ops.sum(
                top_probabilities, axis=-1, keepdims=True
            )
        chosen = ops.transpose(top_experts, (2, 0, 1))  # (k, B, T)
        gates = ops.transpose(top_probabilities, (2, 0, 1))
        assigned = ops.broadcast_to(valid[None], ops.shape(gates))  # (k, B, T)
        one_hot = ops.one_hot(chosen, experts, dtype="float32") * assigned[..., None]

        # Queue position of each assignment within its group (position t): first
        # choices before second ones, earlier rows first. Exclusive cumsum over (k, B).
        flat = ops.reshape(one_hot, (k * batch, length, experts))
        before = ops.reshape(ops.cumsum(flat, axis=0) - flat, ops.shape(one_hot))
        positions = ops.cast(ops.sum(before * one_hot, axis=-1), "int32")  # (k, B, T)

        real = ops.sum(valid, axis=0)  # (T,)
        buffer = _buffer_size(batch, self.capacity_factor * k / experts)
        # The small slack keeps float32 rounding from adding a slot to an exact integer.
        capacity = ops.ceil(self.capacity_factor * k / experts * real - 1e-3)
        capacity = ops.minimum(capacity, real)
        capacity = ops.minimum(ops.cast(capacity, "int32"), buffer)  # (T,)
        kept = assigned * ops.cast(ops.less(positions, capacity[None, None, :]), "float32")
        return {
            "logits": logits,
            "probabilities": probabilities,
            "experts": ops.cast(chosen, "int32"),
            "gates": gates,
            "positions": positions,
            "assigned": assigned,
            "kept": kept,
            "capacity": capacity,
            "buffer": buffer,
        }

    def call(self, inputs, padding_mask=None, training=None):
        shape = ops.shape(inputs)
        batch, length, width = shape[0], shape[1], inputs.shape[-1]
        experts = self.num_experts
        routing = self.route(inputs, padding_mask)
        buffer, kept = routing["buffer"], routing["kept"]

        # Slot of each assignment in a (E, T, buffer) table; dropped ones point at a
        # valid slot but carry token 0 / gate 0, which adds nothing.
        step = ops.arange(length, dtype="int32")[None, None, :]
        slot = ops.minimum(routing["positions"], buffer - 1)
        slot = (routing["experts"] * length + step) * buffer + slot  # (k, B, T)
        token = ops.arange(batch, dtype="int32")[None, :, None] * length + step + 1
        table = ops.scatter(
            ops.reshape(slot, (-1, 1)),
            ops.reshape(token * ops.cast(kept, "int32"), (-1,)),
            (experts * length * buffer,),
        )  # token id + 1 per slot, 0 = empty

        rows = ops.concatenate(
            [ops.zeros((1, width), inputs.dtype), ops.reshape(inputs, (-1, width))], axis=0
        )
        dispatched = ops.reshape(_gather_rows(rows, table), (experts, -1, width))
        hidden = ops.einsum("end,edf->enf", dispatched, self.inner_kernel)  # (E, T*C, F)
        if self.inner_bias is not None:
            hidden = hidden + self.inner_bias[:, None, :]
        if self.activation == "swiglu":
            gate, up = ops.split(hidden, 2, axis=-1)
            hidden = ops.silu(gate) * up
        elif self.activation == "gelu":
            hidden = ops.gelu(hidden, approximate=False)
        else:
            hidden = ops.relu(hidden)
        outputs = ops.einsum("enf,efd->end", hidden, self.output_kernel)  # (E, T*C, D)
        if self.output_bias is not None:
            outputs = outputs + self.output_bias[:, None, :]

        combined = _gather_rows(ops.reshape(outputs, (-1, width)), slot)  # (k, B, T, D)
        weights = ops.cast(routing["gates"] * kept, combined.dtype)[..., None]
        outputs = ops.sum(combined * weights, axis=0)  # (B, T, D)

        self._record(routing, padding_mask)
        return outputs

    def _record(self, routing, padding_mask):
        assigned, kept = routing["assigned"], routing["kept"]
        routed = ops.sum(assigned)
        self.tokens_routed.assign(routed)
        self.tokens_dropped.assign(routed - ops.sum(kept))
        experts = self.num_experts
        tokens = ops.maximum(routed / self.top_k, 1.0)  # real tokens
        if self.aux_loss_weight > 0:
            choices = ops.one_hot(routing["experts"], experts, dtype="float32")
            share = ops.sum(choices * assigned[..., None], axis=(0, 1, 2)) / (tokens * self.top_k)
            valid = assigned[0][..., None]  # (B, T, 1)
            mean_probability = ops.sum(routing["probabilities"] * valid, axis=(0, 1)) / tokens
            balance = experts * ops.sum(share * mean_probability)
            self.add_loss(self.aux_loss_weight * balance)
        if self.z_loss_weight > 0:
            log_z = ops.logsumexp(routing["logits"], axis=-1)  # (B, T)
            z_loss = ops.sum(ops.square(log_z) * assigned[0]) / tokens
            self.add_loss(self.z_loss_weight * z_loss)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "hidden_dim": self.hidden_dim,
                "top_k": self.top_k,
                "capacity_factor": self.capacity_factor,
                "activation": self.activation,
                "use_bias": self.use_bias,
                "aux_loss_weight": self.aux_loss_weight,
                "z_loss_weight": self.z_loss_weight,
            }
        )
        return config


def _gather_rows(params, indices):
    """`params[indices]` along axis 0, for indices known to be >= 0.

    `keras.ops.take` wraps the indices in `where(indices < 0, indices + n, indices)`.
    With TF 2.21 on CPU, XLA (`jit_compile=True`) crashed nondeterministically while
    compiling the gradient of that gather inside this layer ("literal.cc:758 Check
    failed: subshape->dimensions(dim_index) >= size", 6 of 6 runs of a one-layer
    Seq2Seq train step; 0 of 6 with a plain gather). Our indices are never negative, so
    the TensorFlow backend calls `tf.gather` directly.
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(params, indices)
    return ops.take(params, indices, axis=0)


def _buffer_size(batch, share):
    """Slots per expert and group: `min(ceil(share * B), B)`, static when `B` is."""
    if isinstance(batch, int):
        return max(1, min(math.ceil(share * batch - 1e-3), batch))
    size = ops.cast(ops.ceil(share * ops.cast(batch, "float32") - 1e-3), "int32")
    return ops.maximum(ops.minimum(size, batch), 1)
