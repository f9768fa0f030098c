"""Mixture of experts under XLA and MirroredStrategy, in a fresh process.

A subprocess because two logical CPU devices must be configured before TensorFlow
starts, and because an XLA compiler crash (seen with `keras.ops.take`, see
`mixture_of_experts._gather_rows`) aborts the process instead of raising.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from kerastx.models import Seq2SeqTransformer

    small = dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                 ffn_dim=32, dropout=0.0, num_experts=4, moe_every=1,
                 expert_capacity_factor=1.0)
    rng = np.random.default_rng(0)
    source = rng.integers(4, 30, (8, 7)).astype("int32")
    source[1, 4:] = 0
    target = rng.integers(4, 30, (8, 6)).astype("int32")
    target[:, 0] = 1
    result = {}

    # 1. One XLA-compiled training step with MoE layers (gather gradients).
    model = Seq2SeqTransformer(30, 30, **small)
    optimizer = keras.optimizers.Adam(1e-3)
    model({"source_ids": source, "target_in_ids": target})
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def xla_step(s, t):
        with tf.GradientTape() as tape:
            logits = model({"source_ids": s, "target_in_ids": t}, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                t, logits, from_logits=True)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    result["xla_loss"] = float(xla_step(source, target))

    # 2. MirroredStrategy: each replica sees only its own aux losses, counters sum.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = Seq2SeqTransformer(30, 30, **small)
        model.build(None)
    data = tf.data.Dataset.from_tensors((source, target))
    batch = next(iter(strategy.experimental_distribute_dataset(data.unbatch().batch(8))))

    @tf.function
    def replica_step(batch):
        def fn(s, t):
            model({"source_ids": s, "target_in_ids": t}, training=True)
            return tf.constant(len(model.losses)), tf.add_n(model.losses)
        counts, aux = strategy.run(fn, args=batch)
        return counts, aux, model.moe_stats()

    counts, aux, stats = replica_step(batch)
    result["loss_counts"] = [int(c) for c in strategy.experimental_local_results(counts)]
    result["routed"] = float(stats["moe/tokens_routed"])
    result["dropped"] = float(stats["moe/tokens_dropped"])
    # The same numbers computed on one device, half a batch at a time.
    single = Seq2SeqTransformer(30, 30, **small)
    single.build(None)
    single.set_weights(model.get_weights())
    routed = dropped = 0.0
    for half in (slice(0, 4), slice(4, 8)):
        single({"source_ids": source[half], "target_in_ids": target[half]})
        routed += float(single.moe_stats()["moe/tokens_routed"])
        dropped += float(single.moe_stats()["moe/tokens_dropped"])
    result["single_routed"], result["single_dropped"] = routed, dropped
    print("RESULT " + json.dumps(result))
    """
)


def test_moe_trains_under_xla_and_counts_across_replicas():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["xla_loss"] > 0
    # 2 MoE layers (one encoder, one decoder layer) x (balance + z-loss) per replica,
    # not the 8 of both replicas mixed together.
    assert result["loss_counts"] == [4, 4]
    assert result["routed"] == result["single_routed"] > 0
    assert result["dropped"] == result["single_dropped"]
