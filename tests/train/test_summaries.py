"""TensorBoard output of a short run with evaluation, read back from the event files.

A mixture-of-experts copy-task model trains 6 steps (logged and evaluated every 3, the
profiler on over steps 2-3); the test asserts the exact tags and steps written, and the
numbers that can be recomputed from the step log (padding share, MoE dropped share).
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from kerastx import evaluate
from kerastx.layers import masks
from kerastx.train.loop import Trainer
from kerastx.train.schedules import WarmupSchedule
from tests.train import util
from tests.train.fakes import FakeData

EVAL_TAGS = {
    "eval/loss",
    "eval/perplexity",
    "eval/token_accuracy",
    "eval/accuracy",  # evaluation.metrics of the copy task
    "eval/samples",
    "eval/attention/0",
    "eval/attention/1",
    "eval/attention_heads/0",
    "eval/attention_heads/1",
}
MOE_TAGS = {"train/aux_loss", "train/moe_dropped_share"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("board"))
    cfg = util.make_cfg(
        run_dir,
        "training.train_steps=6",
        "training.steps_per_execution=3",
        "training.log_every=3",
        "evaluation.every=3",
        "evaluation.num_samples=3",
        "evaluation.attention_images=2",
        "training.profile_steps=[2,3]",
        "model.num_experts=2",
        "model.moe_every=1",
        "model.expert_capacity_factor=0.5",
        dev=True,
    )
    data = FakeData()
    trainer = Trainer(cfg, data=data, progress=False)
    trainer.run()
    return {
        "dir": run_dir,
        "trainer": trainer,
        "data": data,
        "events": util.events(run_dir),
        "log": util.read_log(run_dir),
    }


def test_the_exact_tags_and_steps(run):
    steps = {tag: sorted(by_step) for tag, by_step in run["events"].items()}
    expected = {tag: [3, 6] for tag in util.TRAIN_TAGS | MOE_TAGS | EVAL_TAGS}
    # Steps 1-3 ran in the two calls that compiled the step functions: no timing yet.
    expected.update({tag: [6] for tag in util.TIMING_TAGS})
    assert steps == expected


def _window(records, last):
    return [r for r in records if last - 3 < r["step"] <= last]


def test_train_scalars_match_the_step_log(run):
    events, records = run["events"], run["log"]
    width = FakeData().max_len + 1  # FakeData pads both sides to this width
    schedule = WarmupSchedule(3e-3, 4, "inverse_sqrt", 6)
    for last in (3, 6):
        window = _window(records, last)
        value = {
            tag[len("train/") :]: util.scalar(v[last])
            for tag, v in events.items()
            if tag.startswith("train/") and last in v
        }
        real = sum(r["tokens"] + r["source_tokens"] for r in window)
        slots = sum(2 * r["examples"] * width for r in window)
        assert value["padding_share"] == pytest.approx(1 - real / slots, rel=1e-6)
        routed = sum(r["moe_routed"] for r in window)
        dropped = sum(r["moe_dropped"] for r in window)
        assert 0 < dropped < routed
        assert value["moe_dropped_share"] == pytest.approx(dropped / routed, rel=1e-6)
        tokens = sum(r["tokens"] for r in window)
        loss = sum(r["loss"] * r["tokens"] for r in window) / tokens
        assert value["loss"] == pytest.approx(loss, rel=1e-5)
        assert value["grad_norm"] == pytest.approx(np.mean([r["grad_norm"] for r in window]))
        assert value["learning_rate"] == pytest.approx(float(schedule(last)))
    # Timing (window 4-6, no compilation in it).
    assert 0.0 <= value["input_wait_share"] <= 1.0
    for name in ("tokens_per_second", "step_time", "mfu"):
        assert 0 < value[name] < float("inf"), name


def test_eval_samples_table(run):
    text = tf.make_ndarray(run["events"]["eval/samples"][6].tensor).item().decode()
    lines = text.splitlines()
    assert lines[:2] == ["| source | reference(s) | hypothesis |", "|---|---|---|"]
    assert len(lines) == 2 + 3  # evaluation.num_samples
    first = " ".join(map(str, run["data"].examples[0]))
    assert lines[2].startswith(f"| {first} | {first} | ")


def _png(value) -> np.ndarray:
    """The first image of an image summary, as a uint8 array (H, W, C)."""
    encoded = tf.make_ndarray(value.tensor)
    return tf.io.decode_png(encoded[2]).numpy()


def _cross_attention_by_hand(model, inputs):
    """The last (only) decoder layer's cross-attention, through the layer's public
    `return_attention_scores`, with its query rebuilt step by step (pre-norm layer)."""
    assert model.num_decoder_layers == 1 and model.norm_position == "pre"
    memory = model.encode(inputs["source_ids"])
    target = inputs["target_in_ids"]
    x = model._embed(model.target_embedding, model.target_positions, model.target_dropout, target)
    layer = model.decoder_layers[0]
    y = layer._self_attention_norm(x)
    self_mask = masks.self_attention_mask(
        target.shape[1], padding_mask=masks.padding_mask(target), causal=True
    )
    x = x + layer._self_attention(y, y, attention_mask=self_mask)
    _, scores = layer._cross_attention(
        layer._cross_attention_norm(x),
        memory["memory"],
        attention_mask=masks.key_padding_attention_mask(memory["memory_mask"]),
        return_attention_scores=True,
    )
    return np.asarray(scores, np.float32)


def test_attention_images_are_head_averaged_cross_attention(run):
    model, data = run["trainer"].model, run["data"]
    batch = data.eval_dataset("dev", 16)[0]
    inputs = {"source_ids": batch["source_ids"][:2], "target_in_ids": batch["target_in_ids"][:2]}
    probabilities = evaluate.cross_attention(model, inputs)  # weights of step 6
    assert probabilities.shape[:2] == (2, model.num_heads)
    np.testing.assert_allclose(probabilities, _cross_attention_by_hand(model, inputs), atol=1e-6)
    for i in range(2):
        length = len(data.examples[i]) + 1  # BOS + tokens (rows), tokens + EOS (columns)
        rows = probabilities[i].mean(axis=0)
        # A distribution over the real source tokens, zero on the padding.
        np.testing.assert_allclose(rows[:length, :length].sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(rows[:, length:], 0.0)
        # A rendered heat map (RGBA; its labels and colours: tests/test_plots.py).
        for tag in (f"eval/attention/{i}", f"eval/attention_heads/{i}"):
            assert _png(run["events"][tag][6]).shape[2] == 4


def test_the_profiler_window_wrote_a_trace(run):
    traces = glob.glob(os.path.join(run["dir"], "logs", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
