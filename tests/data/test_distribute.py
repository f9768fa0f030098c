"""MirroredStrategy over two logical CPUs: step s consumes flat batches 2s and 2s + 1.

Logical devices must be configured before TensorFlow runs any op, so the strategy runs
in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import yaml

from tests.data.conftest import WORDS, write_lines

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from kerastx.config import load_experiment
    from kerastx.data import build_data

    cfg, _ = load_experiment([sys.argv[1]])
    data = build_data(cfg)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = strategy.distribute_datasets_from_function(data.train_dataset_fn())

    @tf.function(reduce_retracing=True)
    def step(batch):
        # What a train step sees in each replica: its own batch.
        return strategy.run(
            lambda b: tf.math.count_nonzero(b["source_ids"], dtype=tf.int32), args=(batch,))

    def local(value):
        return [v.numpy().tolist() for v in strategy.experimental_local_results(value)]

    steps = []
    iterator = iter(dist)
    for _ in range(6):
        batch = next(iterator)
        steps.append({
            "epoch": local(batch["epoch"]), "index": local(batch["index"]),
            "ids": local(batch["example_id"]), "tokens": local(step(batch)),
        })
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    flat = [
        {"epoch": int(b["epoch"]), "index": int(b["index"]),
         "ids": b["example_id"].numpy().tolist(),
         "tokens": int(tf.math.count_nonzero(b["source_ids"]))}
        for b in data.train_dataset_fn()(context).take(12)
    ]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "steps": steps,
                      "flat": flat}))
""")


def test_mirrored_strategy_step_s_consumes_flat_batches_2s_and_2s_plus_1(tmp_path):
    src = WORDS[:12]
    doc = {
        "name": "mirrored",
        "run_dir": str(tmp_path / "run"),
        "data": {
            "train": [
                {
                    "type": "parallel",
                    "source": write_lines(tmp_path / "s.txt", src),
                    "target": write_lines(tmp_path / "t.txt", [w[::-1] for w in src]),
                }
            ],
            "max_source_length": 16,
            "max_target_length": 16,
            "batch_size": 64,
        },
    }
    path = tmp_path / "mirrored.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    flat = out["flat"]
    assert {b["epoch"] for b in flat} == {0, 1}  # the steps cross an epoch boundary
    for s, step in enumerate(out["steps"]):
        for r in range(2):
            expected = flat[2 * s + r]
            got = {key: step[key][r] for key in ("epoch", "index", "ids", "tokens")}
            assert got == expected, (s, r)
