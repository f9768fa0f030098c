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


TIED = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from kerastx.models import DecoderLM, Seq2SeqTransformer

    small = dict(d_model=16, num_heads=2, ffn_dim=32, dropout=0.0)
    rng = np.random.default_rng(0)
    source = rng.integers(4, 40, (8, 7)).astype("int32")
    source[1, 4:] = 0
    target = rng.integers(4, 40, (8, 6)).astype("int32")
    target[:, 0] = 1
    target[2, 3:] = 0
    labels = np.roll(target, -1, axis=1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def make(kind):
        if kind == "lm_tied":
            return DecoderLM(40, num_layers=1, tie_embeddings=True, **small)
        share = "all" if kind == "s2s_all" else "target_output"
        return Seq2SeqTransformer(40, 40, num_encoder_layers=1, num_decoder_layers=1,
                                  share_embeddings=share, **small)

    def inputs(kind, s, t):
        return {"token_ids": t} if kind == "lm_tied" else {"source_ids": s, "target_in_ids": t}

    def loss_sum(model, kind, s, t, y):
        logits = model(inputs(kind, s, t), training=True)
        per_token = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return tf.reduce_sum(per_token * tf.cast(y != 0, tf.float32))

    result = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        for kind in ("lm_tied", "s2s_all", "s2s_target_output"):
            single = make(kind)
            single(inputs(kind, source, target))

            @tf.function
            def one(s, t, y):
                with tf.GradientTape() as tape:
                    loss = loss_sum(single, kind, s, t, y)
                return [tf.convert_to_tensor(g)
                        for g in tape.gradient(loss, single.trainable_variables)]

            with strategy.scope():
                mirrored = make(kind)
                mirrored(inputs(kind, source, target))
            mirrored.set_weights(single.get_weights())
            data = tf.data.Dataset.from_tensor_slices((source, target, labels)).batch(8)
            batch = next(iter(strategy.experimental_distribute_dataset(data)))

            @tf.function
            def two(batch):
                def fn(s, t, y):
                    with tf.GradientTape() as tape:
                        loss = loss_sum(mirrored, kind, s, t, y)
                    grads = tape.gradient(loss, mirrored.trainable_variables)
                    grads = [tf.convert_to_tensor(g) for g in grads]
                    return tf.distribute.get_replica_context().all_reduce("sum", grads)
                return strategy.run(fn, args=batch)

            want = [g.numpy() for g in one(source, target, labels)]
            got = [strategy.experimental_local_results(g)[0].numpy() for g in two(batch)]
            # Relative to the largest gradient entry: the key biases' gradients are
            # zero up to rounding (softmax ignores a per-query shift).
            scale = max(float(np.max(np.abs(a))) for a in want)
            result[f"{policy}/{kind}"] = max(
                float(np.max(np.abs(a - b))) for a, b in zip(want, got)
            ) / scale
    print("RESULT " + json.dumps(result))
    """
)


def test_tied_output_projection_gradients_under_mirrored_strategy():
    # Two replicas, half the batch each, gradients all-reduced: the tied projection's
    # gradient equals the one-device gradient of the whole batch (every tying option).
    run = subprocess.run([sys.executable, "-c", TIED], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert len(result) == 6
    for key, relative_error in result.items():
        tol = 1e-5 if key.startswith("float32") else 2e-2  # bf16 activations
        assert relative_error <= tol, (key, relative_error)
