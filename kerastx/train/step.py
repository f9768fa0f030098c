"""The compiled training step: micro-batches -> global gradient -> clipped update.

One replica step, for every strategy:
1. the real target tokens of all micro-batches are counted and summed over replicas (a
   scalar `all_reduce`, before any forward pass);
2. for each of the `accumulation` micro-batches, the gradient of the token loss summed
   over the micro-batch (plus auxiliary losses weighted by its token count) and divided
   by that global token count is computed and added up locally (optionally under XLA);
   the sum over replicas (`all_reduce`) is then the gradient of the global token mean,
   so the loss does not depend on how the global batch is split across replicas and
   micro-batches, and no division pass over the gradients is needed;
3. the global norm is taken and the gradient clipped (on the global gradient, not on
   each replica's share);
4. the optimizer applies it (a float16 step with non-finite gradients is skipped and
   the loss scale halved; the learning rate is `schedule(trainer step)`, so a skipped
   step does not shift the schedule although Keras's `optimizer.iterations` lags).

Mixture-of-experts routing counters are read inside the replica step after each
micro-batch (each replica's own copy of the on-read variables, see
`kerastx.layers.MixtureOfExperts`) and summed like the other statistics: a read of
`model.moe_stats()` outside `strategy.run` sums the replicas but sees only the last
micro-batch, which undercounts under gradient accumulation.

`train_fn(iterator, n)` runs `n` such steps in one `tf.function` call and returns each
step's statistics, so the host writes an exact per-step log.
"""

from __future__ import annotations

import time

import tensorflow as tf

from kerastx.losses import label_weights, smoothed_cross_entropy_sum, token_accuracy_counts
from kerastx.tfutil import expected_retracing

# Per-step statistics, summed over replicas and micro-batches (see _batch_stats).
SUM_KEYS = (
    "loss_sum",
    "nll_sum",
    "tokens",
    "correct",
    "source_tokens",
    "slots",
    "real_slots",
    "examples",
    "id_hash",
    "attn_self",
    "attn_cross",
    "attn_source",
    "aux_loss",
)
# Added to SUM_KEYS for models with mixture-of-experts layers.
MOE_KEYS = ("moe_routed", "moe_dropped")
# Added for streamed corpora: the batches' `counts` (kerastx.data.stream.COUNT_KEYS).
STREAM_KEYS = ("data_read", "data_dropped", "data_empty", "data_truncated", "data_replaced")
_HASH_MULT = 2654435761
_HASH_MOD = 2**31


def _batch_stats(batch: dict, task) -> dict:
    """Counts of one micro-batch that do not depend on the model."""
    f32 = tf.float32
    ids = tf.cast(batch["example_id"], tf.int64)
    id_hash = tf.reduce_sum(tf.math.floormod(ids * _HASH_MULT, _HASH_MOD))
    src = batch[task.source_key] if task.source_key else None
    tgt = batch[task.target_key] if task.target_key else None
    stats = {"id_hash": id_hash, "examples": tf.cast(tf.shape(ids)[0], f32)}
    if "counts" in batch:
        counts = tf.cast(batch["counts"], f32)
        stats.update({key: counts[i] for i, key in enumerate(STREAM_KEYS)})
    src_real = tf.reduce_sum(tf.cast(src != 0, f32)) if src is not None else tf.constant(0.0)
    tgt_real = tf.reduce_sum(tf.cast(tgt != 0, f32)) if tgt is not None else tf.constant(0.0)
    src_slots = tf.cast(tf.size(src), f32) if src is not None else tf.constant(0.0)
    tgt_slots = tf.cast(tf.size(tgt), f32) if tgt is not None else tf.constant(0.0)
    src_len = tf.cast(tf.shape(src)[1], f32) if src is not None else tf.constant(0.0)
    tgt_len = tf.cast(tf.shape(tgt)[1], f32) if tgt is not None else tf.constant(0.0)
    stats.update(
        source_tokens=src_real,
        slots=src_slots + tgt_slots,
        real_slots=src_real + tgt_real,
        # Attention work: each real query token attends over the padded key length.
        attn_source=src_real * src_len,
        attn_self=tgt_real * tgt_len,
        attn_cross=tgt_real * src_len,
    )
    return stats


class StepBuilder:
    """Builds the distributed `train_fn` of a model, optimizer and strategy.

    Args:
        model: the Keras model (built, under the strategy's scope).
        optimizer: an optimizer from `kerastx.train.optimizers` (expects reduced grads).
        strategy: the tf.distribute strategy.
        task: the experiment's `kerastx.tasks.Task` (batch layout, labels).
        schedule: callable step -> learning rate.
        label_smoothing: float.
        clip_norm: float or None. Global-norm clipping.
        accumulation: int. Micro-batches per optimizer step.
        float16: bool. Dynamic loss scaling (float16 mixed precision).
        jit_compile: bool. Compile each micro-batch's gradient computation with XLA.
        state: dict of tf.Variables: step, data_epoch, data_index, loss_scale, good_steps.
        streamed: bool. Batches carry `counts` (streamed corpora): their sums per step
            are statistics, and so is the epoch of the step's last batch.
    """

    GROWTH_INTERVAL = 2000

    def __init__(
        self,
        model,
        optimizer,
        strategy,
        task,
        schedule,
        label_smoothing,
        clip_norm,
        accumulation,
        float16,
        jit_compile,
        state,
        streamed=False,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.task = task
        self.schedule = schedule
        self.label_smoothing = float(label_smoothing)
        self.clip_norm = clip_norm
        self.accumulation = int(accumulation)
        self.float16 = float16
        self.state = state
        moe_layers = getattr(model, "moe_layers", None)
        self._moe = moe_layers() if moe_layers is not None else []
        self.sum_keys = (
            SUM_KEYS + (MOE_KEYS if self._moe else ()) + (STREAM_KEYS if streamed else ())
        )
        self.streamed = streamed
        self._grads = (
            tf.function(self._micro_grads, jit_compile=True) if jit_compile else self._micro_grads
        )
        self.train_fn = expected_retracing(tf.function(self._train_fn))
        self._probe_fn = None

    def probe(self, iterator):
        """Runs one step with the input fetched eagerly first, timing both parts.

        The share of the step spent waiting for input (`input_wait_share` in TensorBoard)
        comes from this: fetching from the prefetch buffer is instant when the pipeline
        keeps up.

        Returns:
            `(stats, fetch_seconds, total_seconds, traced)`; stats as from `train_fn`
            with n=1; `traced`: this call traced (compiled) the step, so its time is
            not the step's.
        """
        host = getattr(iterator, "fetch_local", None) is not None  # streamed corpora
        if self._probe_fn is None:
            if host:
                # Local batches in, dealt to the replicas inside (train/stream_input).
                local = tuple(iterator.local_spec for _ in range(iterator.local))
                spec = tuple(local for _ in range(self.accumulation))

                def probe_dealt(batches):
                    return self._probe(tuple(iterator.deal(b) for b in batches))

                self._probe_fn = tf.function(probe_dealt, input_signature=[spec])
            else:
                spec = tuple(iterator.element_spec for _ in range(self.accumulation))
                self._probe_fn = tf.function(self._probe, input_signature=[spec])
        traces = self._probe_fn.experimental_get_tracing_count()
        t0 = time.perf_counter()
        fetch = iterator.fetch_local if host else iterator.get_next
        batches = tuple(fetch() for _ in range(self.accumulation))
        t1 = time.perf_counter()
        stats = {k: v.numpy()[None] for k, v in self._probe_fn(batches).items()}
        traced = self._probe_fn.experimental_get_tracing_count() != traces
        return stats, t1 - t0, time.perf_counter() - t0, traced

    def run(self, iterator, n: int):
        """Runs `n` steps in one `train_fn` call.

        Returns:
            `(stats, seconds, traced)`: numpy stats (one entry per step), the call's wall
            time, and whether the call traced (compiled) `train_fn`.
        """
        traces = self.train_fn.experimental_get_tracing_count()
        t0 = time.perf_counter()
        stats = self.train_fn(iterator, tf.constant(n, tf.int32))
        stats = {k: v.numpy() for k, v in stats.items()}
        seconds = time.perf_counter() - t0
        return stats, seconds, self.train_fn.experimental_get_tracing_count() != traces

    def _probe(self, batches):
        return self._step_on(batches)

    # -- replica context -------------------------------------------------------------

    def _micro_grads(self, batch: dict, grad_scale: tf.Tensor):
        inputs, labels = self.task.model_inputs(batch)
        pad_id = self.task.label_pad_id
        with tf.GradientTape() as tape:
            logits = self.model(inputs, training=True)
            loss_sum, nll_sum, count = smoothed_cross_entropy_sum(
                labels, logits, self.label_smoothing, pad_id
            )
            losses = self.model.losses
            aux = tf.cast(tf.add_n(losses), tf.float32) if losses else tf.constant(0.0)
            # Auxiliary losses are per-batch means: weighting them by the batch's token
            # count makes their global contribution a token-weighted mean.
            # grad_scale = loss scale / global target tokens: the gradients come out
            # already normalized (no per-variable division pass after the all-reduce).
            objective = (loss_sum + aux * count) * grad_scale
        variables = self.model.trainable_variables
        grads = tape.gradient(objective, variables)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)
        ]
        stats = {
            "loss_sum": loss_sum,
            "nll_sum": nll_sum,
            "tokens": count,
            "correct": token_accuracy_counts(labels, logits, pad_id),
            "aux_loss": aux * count,
        }
        return grads, stats

    def _label_count(self, batch: dict) -> tf.Tensor:
        """The real target positions of a micro-batch (float32): the loss's `count`."""
        _, labels = self.task.model_inputs(batch)
        return tf.reduce_sum(label_weights(labels, self.task.label_pad_id))

    def _moe_counts(self) -> dict:
        """This replica's routing counters of the last forward pass (replica context)."""
        routed = [tf.convert_to_tensor(layer.tokens_routed.value) for layer in self._moe]
        dropped = [tf.convert_to_tensor(layer.tokens_dropped.value) for layer in self._moe]
        return {"moe_routed": tf.add_n(routed), "moe_dropped": tf.add_n(dropped)}

    def _replica_step(self, batches, loss_scale):
        ctx = tf.distribute.get_replica_context()
        total_grads = None
        totals = {k: tf.constant(0.0) for k in self.sum_keys if k != "id_hash"}
        id_hash = tf.constant(0, tf.int64)
        position = tf.constant(0, tf.int64)
        global_tokens = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.add_n([self._label_count(b) for b in batches])
        )
        grad_scale = loss_scale / tf.maximum(global_tokens, 1.0)
        for batch in batches:
            grads, stats = self._grads(batch, grad_scale)
            if self._moe:
                stats.update(self._moe_counts())
            stats.update(_batch_stats(batch, self.task))
            total_grads = (
                grads if total_grads is None else [a + g for a, g in zip(total_grads, grads)]
            )
            id_hash += stats.pop("id_hash")
            for key, value in stats.items():
                totals[key] += tf.cast(value, tf.float32)
            position = tf.cast(batch["epoch"], tf.int64) * 2**32 + tf.cast(batch["index"], tf.int64)
        keys = sorted(totals)
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([totals[k] for k in keys]))
        totals = dict(zip(keys, tf.unstack(summed)))
        totals["id_hash"] = ctx.all_reduce(tf.distribute.ReduceOp.SUM, id_hash)
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total_grads)
        if self.float16:
            grads = [g / loss_scale for g in grads]
        grad_norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(grad_norm)
        if self.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=grad_norm)
        totals.update(grad_norm=grad_norm, finite=tf.cast(finite, tf.float32))
        position = tf.reshape(position, [1])  # (1,): gathered over replicas
        if self.float16:
            # Applied (or skipped) in cross-replica context by _step_on: the optimizer's
            # merge_call cannot sit inside a tf.cond in replica context under
            # MirroredStrategy (the keras-team/keras#21366 crash).
            return totals, position, grads
        self.optimizer.apply(grads, self.model.trainable_variables)
        return totals, position

    # -- cross-replica context -------------------------------------------------------

    def _one_step(self, iterator):
        return self._step_on(tuple(next(iterator) for _ in range(self.accumulation)))

    def _step_on(self, batches):
        state = self.state
        step = state["step"].assign_add(1)
        lr = tf.cast(self.schedule(step), tf.float32)
        self.optimizer.learning_rate.assign(lr)
        loss_scale = tf.identity(state["loss_scale"])
        outputs = self.strategy.run(self._replica_step, args=(batches, loss_scale))
        totals, position = outputs[:2]
        local = self.strategy.experimental_local_results
        totals = {k: local(v)[0] for k, v in totals.items()}
        if self.float16:
            # The gradients are all-reduced: every replica holds the same values, and
            # each variable copy is updated with its own replica's.
            grads = outputs[2]

            def apply():
                self.optimizer.apply(grads, self.model.trainable_variables)
                return tf.constant(True)

            tf.cond(totals["finite"] > 0, apply, lambda: tf.constant(False))
        positions = self.strategy.gather(position, axis=0)
        last = tf.reduce_max(positions)
        # The next batch to read: the one after the last consumed.
        state["data_epoch"].assign(last // 2**32)
        state["data_index"].assign(last % 2**32 + 1)
        if self.float16:
            finite = totals["finite"] > 0
            good = tf.where(finite, state["good_steps"] + 1, 0)
            grow = good >= self.GROWTH_INTERVAL
            scale = tf.where(
                finite,
                tf.where(grow, loss_scale * 2.0, loss_scale),
                tf.maximum(loss_scale / 2.0, 1.0),
            )
            state["loss_scale"].assign(scale)
            state["good_steps"].assign(tf.where(grow, tf.zeros_like(good), good))
        totals.update(lr=lr, loss_scale=loss_scale)
        if self.streamed:
            totals["data_epoch"] = tf.cast(last // 2**32, tf.float32)
        return totals

    def _train_fn(self, iterator, n):
        names = (*self.sum_keys, "grad_norm", "finite", "lr", "loss_scale")
        if self.streamed:
            names += ("data_epoch",)
        arrays = {
            k: tf.TensorArray(tf.int64 if k == "id_hash" else tf.float32, size=n) for k in names
        }
        for i in tf.range(n):
            totals = self._one_step(iterator)
            arrays = {k: arrays[k].write(i, totals[k]) for k in names}
        return {k: a.stack() for k, a in arrays.items()}
