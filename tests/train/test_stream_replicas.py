"""Streamed corpora under MirroredStrategy over two logical CPUs, in a fresh process.

The host iterator (`train/stream_input.HostIterator`) deals flat batch i of the pipeline
to replica i % 2, inside the compiled step, as the distributed iterator would; over an
epoch every kept example reaches exactly one replica once. Then a Trainer trains and
resumes on the same corpus under the strategy (the per-replica dealing inside
`train_fn`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from kerastx.config import load_experiment
from kerastx.data import build_data
from tests.data.test_stream import _corpus, _epoch

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from kerastx.config import load_experiment
    from kerastx.data import build_data
    from kerastx.train.stream_input import HostIterator

    cfg, _ = load_experiment([sys.argv[1]])
    data = build_data(cfg)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    host = HostIterator(data.stream_dataset(2), strategy, 2)

    @tf.function
    def step():
        batch = next(host)
        return strategy.run(lambda b: (b["example_id"], b["epoch"]), args=(batch,))

    def local(value):
        return [v.numpy().tolist() for v in strategy.experimental_local_results(value)]

    steps = []
    for _ in range(int(sys.argv[2])):
        ids, epochs = step()
        steps.append({"ids": local(ids), "epochs": local(epochs)})
    flat = [
        {"ids": b["example_id"].numpy().tolist(), "epoch": int(b["epoch"])}
        for b in data.stream_dataset(2).take(2 * int(sys.argv[2]))
    ]
    memory = build_data(load_experiment([sys.argv[1]], ["data.stream=memory",
                                                        "run_dir=" + sys.argv[3]])[0])
    kept = sum(len(c) for c in memory.train_corpora())
    print("RESULT " + json.dumps({"steps": steps, "flat": flat, "kept": kept}))
""")


def _experiment(tmp_path) -> str:
    src, tgt = _corpus(tmp_path)
    doc = {
        "name": "stream2",
        "run_dir": str(tmp_path / "run"),
        "data": {
            "train": [{"type": "parallel", "source": src, "target": tgt}],
            "source_tokenizer": {"type": "symbols"},
            "target_tokenizer": {"type": "symbols"},
            "shared_vocab": True,
            "max_source_length": 24,
            "max_target_length": 24,
            "batch_size": 192,
            "bucket_width": 4,
            "shuffle_buffer": 150,
            "stream": "stream",
        },
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def test_two_replicas_take_alternate_batches_and_an_epoch_exactly_once(tmp_path):
    exp = _experiment(tmp_path)
    steps = 40
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, exp, str(steps), str(tmp_path / "mem")],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT ") :])
    flat = result["flat"]
    for s, step in enumerate(result["steps"]):
        for r in range(2):
            assert step["ids"][r] == flat[2 * s + r]["ids"], (s, r)
            assert step["epochs"][r] == flat[2 * s + r]["epoch"]
    epoch0 = [i for b in flat if b["epoch"] == 0 for i in b["ids"]]
    assert any(b["epoch"] == 1 for b in flat), "the steps must cross into epoch 1"
    assert len(epoch0) == len(set(epoch0)) == result["kept"]


TRAIN = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from kerastx.config import load_experiment
    from kerastx.train.loop import Trainer

    cfg, _ = load_experiment([sys.argv[1]], sys.argv[2:])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = Trainer(cfg, strategy=strategy, progress=False).run()
    print("RESULT " + json.dumps({"step": out["step"]}))
""")


def _train(exp, *overrides):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN, exp, *overrides],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


def _losses(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [(r["step"], r["loss"], r["ids_hash"]) for r in map(json.loads, f)]


def test_a_trainer_under_two_replicas_resumes_streamed_data_exactly(tmp_path):
    exp = _experiment(tmp_path)
    common = [
        "model.d_model=16",
        "model.num_heads=2",
        "model.num_encoder_layers=1",
        "model.num_decoder_layers=1",
        "model.ffn_dim=32",
        "model.max_length=24",
        "model.dropout=0.1",
        "training.deterministic=true",
        "training.checkpoint_every=6",
        "training.log_every=3",
        "evaluation.every=0",
        "export.enabled=false",
        "data.dev=null",
        "data.test=null",
    ]
    whole = str(tmp_path / "whole")
    assert _train(exp, f"run_dir={whole}", "training.train_steps=18", *common)["step"] == 18
    parts = str(tmp_path / "parts")
    assert _train(exp, f"run_dir={parts}", "training.train_steps=12", *common)["step"] == 12
    assert _train(exp, f"run_dir={parts}", "training.train_steps=18", *common)["step"] == 18
    assert _losses(parts) == _losses(whole)
    assert os.listdir(os.path.join(parts, "checkpoints", "data", "worker-0"))


WORKER = textwrap.dedent("""
    import json, sys
    from kerastx.config import load_experiment
    from kerastx.data import build_data
    from kerastx.train.stream_input import StreamInput

    class Resolver:  # what MultiWorkerMirroredStrategy's TF_CONFIG resolver says
        task_type, task_id = "worker", int(sys.argv[2])
        def cluster_spec(self):
            class Spec:
                def as_dict(self):
                    return {"worker": ["localhost:1", "localhost:2"]}
            return Spec()

    class Strategy:  # two workers of one replica each
        cluster_resolver = Resolver()
        num_replicas_in_sync = 2

    cfg, _ = load_experiment([sys.argv[1]])
    source = StreamInput(build_data(cfg), Strategy(), cfg.run_dir)
    assert (source.workers, source.worker, source.local) == (2, int(sys.argv[2]), 1)
    host = source.iterator()
    ids = []
    while True:
        (batch,) = host.fetch_local()
        if int(batch["epoch"]) > 0:
            break
        ids += batch["example_id"].numpy().tolist()
    print("RESULT " + json.dumps(ids))
""")


def test_two_worker_processes_read_an_epoch_exactly_once_together(tmp_path):
    """Each worker process's StreamInput picks its own pipeline (its task index)."""
    exp = _experiment(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, exp, str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for k in range(2)
    ]
    parts = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, err[-3000:]
        parts.append(json.loads(lines[0][len("RESULT ") :]))
    one = build_data(load_experiment([exp], [f"run_dir={tmp_path / 'one'}"])[0])
    kept = sorted(i for b in _epoch(one.stream_dataset(1)) for i in b["example_id"].tolist())
    memory = build_data(
        load_experiment([exp], ["data.stream=memory", f"run_dir={tmp_path / 'mem'}"])[0]
    )
    assert len(kept) == sum(len(c) for c in memory.train_corpora())
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == kept
