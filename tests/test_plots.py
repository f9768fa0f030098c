"""Pictures: the attention heat maps (`kerastx.plots`), the TensorBoard images a seq2seq
training run writes with them, `kerastx attention` and `kerastx curves`.

The figures are checked through matplotlib's own objects (tick label texts, titles, the
colour bar's label, label extents after drawing) and the PNG bytes (size from the PNG
header, colours); one tiny copy-task run (40 steps, evaluated at 20 and 40) serves the
TensorBoard, attention and curves tests.
"""

import os
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
import yaml

from kerastx import cli, curves, plots
from tests.trained_runs import ROOT, counting_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _labels(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- the renderer ---------------------------------------------------------------------


def test_token_labels():
    assert plots.token_label("the") == "the"
    assert plots.token_label(" ") == "␣"
    assert plots.token_label("") == "∅"
    assert plots.token_label("a\tb") == "a·b"
    assert plots.token_label("x" * 30) == "x" * 11 + "…"
    assert plots.attention_title(3, 3, None, 4) == "layer 3/3 cross-attention, mean of 4 heads"
    assert plots.attention_title(1, 6, 2, 8) == "layer 1/6 cross-attention, head 2/8"


def test_a_heat_map_has_token_axes_a_title_and_a_colour_bar():
    source = ["the", " ", "$x$", "a_very_long_token_indeed", "</s>"]
    output = ["le", "$", "</s>"]
    weights = _softmax(np.random.default_rng(0).normal(size=(3, 5)))
    title = plots.attention_title(3, 3, None, 4)
    fig = plots.attention_figure(weights, source, output, [title], suptitle="in → out")
    png = plots.figure_png(fig)
    image, bar = fig.axes
    assert _labels(image.get_xticklabels()) == ["the", "␣", "$x$", "a_very_long…", "</s>"]
    assert _labels(image.get_yticklabels()) == ["le", "$", "</s>"]
    # Drawn as plain text: "$x$" is not math mode.
    assert not any(t.get_parse_math() for t in image.get_xticklabels())
    assert image.get_title() == title
    assert (image.get_xlabel(), image.get_ylabel()) == ("source tokens", "output tokens")
    assert bar.get_ylabel() == "attention weight"
    assert fig.get_suptitle() == "in → out"
    np.testing.assert_array_equal(image.get_images()[0].get_array(), weights.astype(np.float32))
    # The size is the figure's (no cropping), in the PNG and in the RGBA array.
    width, height = round(fig.get_figwidth() * plots.DPI), round(fig.get_figheight() * plots.DPI)
    assert _png_size(png) == (width, height)
    rgba = plots.figure_rgba(fig)
    assert rgba.shape == (height, width, 4) and rgba.dtype == np.uint8


def _inside(inner, outer) -> bool:
    return (
        inner.x0 >= outer.x0 - 0.5
        and inner.x1 <= outer.x1 + 0.5
        and inner.y0 >= outer.y0 - 0.5
        and inner.y1 <= outer.y1 + 0.5
    )


def test_64_tokens_each_way_keep_every_label_apart_and_inside():
    n = 64
    source = [f"src{i}" for i in range(n - 1)] + ["</s>"]
    output = [f"out{i}" for i in range(n - 1)] + ["</s>"]
    weights = _softmax(np.random.default_rng(1).normal(size=(n, n)) + 4 * np.eye(n))
    fig = plots.attention_figure(
        weights, source, output, [plots.attention_title(6, 6, None, 8)], suptitle="x " * 200
    )
    plots.figure_rgba(fig)  # draws
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    page = fig.bbox
    xs = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    ys = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
    assert len(xs) == len(ys) == n
    for a, b in zip(xs, xs[1:]):  # left to right, vertical text
        assert a.x1 <= b.x0 + 0.5
    for a, b in zip(ys, ys[1:]):  # top to bottom
        assert b.y1 <= a.y0 + 0.5
    texts = [ax.title, fig._suptitle, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels()]
    for text in texts + list(ax.get_yticklabels()):
        assert _inside(text.get_window_extent(renderer), page), text.get_text()
    # The long suptitle was shortened to the figure's width.
    assert fig.get_suptitle().endswith("…")


def test_per_head_panels_share_one_scale():
    heads = _softmax(np.random.default_rng(2).normal(size=(4, 3, 6)))
    titles = [plots.attention_title(2, 3, h + 1, 4) for h in range(4)]
    fig = plots.attention_figure(heads, list("abcde") + ["</s>"], ["x", "y", "</s>"], titles, 2)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == titles
    assert len(fig.axes) == 5  # 4 panels and one colour bar
    assert {ax.get_images()[0].get_clim() for ax in panels} == {
        (0.0, float(heads.astype(np.float32).max()))
    }
    # Two panels per row: the top-right panel is right of the top-left one, above row 2.
    boxes = [ax.get_position() for ax in panels]
    assert boxes[1].x0 > boxes[0].x1 and boxes[2].y1 < boxes[0].y0
    with pytest.raises(ValueError, match="need 6 source tokens"):
        plots.attention_figure(heads, ["a"], ["x", "y", "</s>"], titles)


def test_curves_figure_has_one_line_per_run_and_a_legend():
    runs = [
        {"name": "a", "loss": [(10, 0.5, 3.0), (20, 1.0, 2.0)], "metric": [(20, 1.0, 0.4)]},
        {"name": "b", "loss": [(10, 0.7, 3.5), (20, 1.4, 2.5)], "metric": []},
    ]
    fig = plots.curves_figure(runs, "wer", x="minutes")
    loss_ax, metric_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["a", "b"]
    assert [t.get_text() for t in metric_ax.get_legend().get_texts()] == ["a"]
    assert loss_ax.get_xlabel() == "wall minutes" and metric_ax.get_ylabel() == "dev wer"
    np.testing.assert_array_equal(loss_ax.get_lines()[1].get_xdata(), [0.7, 1.4])
    steps = plots.curves_figure(runs, "wer", x="steps")
    np.testing.assert_array_equal(steps.axes[0].get_lines()[0].get_xdata(), [10, 20])
    assert _png_size(plots.figure_png(fig)) == (1000, 400)


def test_curves_figure_draws_each_reference_as_a_labelled_level_line():
    runs = [{"name": "a", "loss": [(10, 0.5, 3.0)], "metric": [(10, 0.5, 2.1), (20, 1.0, 1.6)]}]
    fig = plots.curves_figure(runs, "bits_per_byte", references=[("xz", 1.693), ("gzip", 1.949)])
    loss_ax, metric_ax = fig.axes
    legend = [t.get_text() for t in metric_ax.get_legend().get_texts()]
    assert legend == ["a", "xz: 1.693", "gzip: 1.949"]
    levels = [line.get_ydata() for line in metric_ax.get_lines()[1:]]
    assert [list(y) for y in levels] == [[1.693, 1.693], [1.949, 1.949]]
    assert len(loss_ax.get_lines()) == 1  # the loss panel has no reference lines


# --- a tiny trained run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("plots") / "copy")
    overrides = [
        f"run_dir={run_dir}",
        "training.train_steps=40",
        "training.checkpoint_every=40",
        "training.log_every=10",
        "evaluation.every=20",
        "evaluation.attention_images=1",
        "export.enabled=false",
        "data.dev.num_examples=20",
        "data.test=null",
    ]
    args = [os.path.join(ROOT, "experiments", "copy_task.yaml")]
    for item in overrides:
        args += ["--set", item]
    assert cli.main(["train", *args]) == 0
    return run_dir


def _image_events(run_dir, step):
    out = {}
    for path in sorted(os.listdir(os.path.join(run_dir, "logs"))):
        for record in tf.data.TFRecordDataset(os.path.join(run_dir, "logs", path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if event.step == step and value.tag.startswith("eval/attention"):
                    out[value.tag] = value
    return out


def test_tensorboard_attention_images_are_labelled_heat_maps(copy_run):
    images = _image_events(copy_run, 40)
    assert set(images) == {"eval/attention/0", "eval/attention_heads/0"}
    value = images["eval/attention/0"]
    source = value.metadata.summary_description.split("  \n")[0].removeprefix("source: ")
    tokens = source.split() + ["</s>"]  # symbols; the copy task's reference is the source
    mean = tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
    heads = tf.io.decode_png(tf.make_ndarray(images["eval/attention_heads/0"].tensor)[2]).numpy()
    # The figure for this example's tokens (1 layer of 2 heads) has this very size.
    expected = plots.attention_figure(
        np.zeros((len(tokens), len(tokens))),
        tokens,
        tokens,
        [plots.attention_title(1, 1, None, 2)],
        suptitle="source",
    )
    assert mean.shape == (*plots.figure_rgba(expected).shape[:2], 4)
    assert mean.shape[:2] != (128, 128)
    assert heads.shape[0] == mean.shape[0] and heads.shape[1] > 1.5 * mean.shape[1]
    for image in (mean, heads):
        assert len(np.unique(image.reshape(-1, 4), axis=0)) > 2


def test_kerastx_attention_writes_a_png(copy_run, tmp_path, capsys):
    out = str(tmp_path / "attention.png")
    code = cli.main(
        ["attention", copy_run, "--input", "a b c d", "-o", out, "--layer", "all", "--head", "all"]
    )
    assert code == 0
    assert f"wrote {out} (2 panel(s))" in capsys.readouterr().out
    with open(out, "rb") as f:
        data = f.read()
    width, height = _png_size(data)
    assert width > height > 100  # two head panels side by side
    forced = str(tmp_path / "forced.png")
    assert cli.main(["attention", copy_run, "-i", "a b", "-o", forced, "--target", "a b"]) == 0
    with open(forced, "rb") as f:
        assert _png_size(f.read())[1] > 100


@pytest.mark.parametrize(
    "flags, line",
    [
        (["--layer", "2"], "--layer: must be 1 or all (the model has 1 decoder layer); got '2'"),
        (
            ["--head", "mean3"],
            "--head: must be 1..2, mean or all (the model has 2 heads); got 'mean3'",
        ),
    ],
)
def test_kerastx_attention_refuses_a_layer_or_head_out_of_range(
    copy_run, tmp_path, capsys, flags, line
):
    out = str(tmp_path / "bad.png")
    capsys.readouterr()
    assert cli.main(["attention", copy_run, "-i", "a b", "-o", out, *flags]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert errors == [f"kerastx attention: error: {line}"]
    assert not os.path.exists(out)


def test_kerastx_attention_refuses_a_language_model(tmp_path, capsys):
    base = tmp_path / "lm"
    base.mkdir()
    (base / "train.txt").write_text("".join(counting_line(s) + "\n" for s in range(20)))
    doc = {
        "run_dir": str(base / "run"),
        "data": {
            "train": [{"type": "text", "path": str(base / "train.txt")}],
            "source_tokenizer": {"type": "symbols"},
            "max_source_length": 32,
            "max_target_length": 32,
        },
        "model": {
            "type": "decoder_lm",
            "d_model": 16,
            "num_heads": 2,
            "ffn_dim": 32,
            "num_layers": 1,
            "max_length": 32,
        },
        "training": {"train_steps": 2, "warmup_steps": 1, "checkpoint_every": 2},
        "evaluation": {"every": 0},
        "decoding": {"max_length": 32},
        "export": {"enabled": False},
    }
    (base / "lm.yaml").write_text(yaml.safe_dump(doc))
    assert cli.main(["train", str(base / "lm.yaml")]) == 0
    capsys.readouterr()
    out = str(tmp_path / "lm.png")
    assert cli.main(["attention", doc["run_dir"], "-i", "a b", "-o", out]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert errors == [
        f"kerastx attention: error: {doc['run_dir']}: model.type=decoder_lm has no "
        "cross-attention; kerastx attention draws the decoder's attention over the source "
        "of an encoder-decoder run"
    ]


def test_kerastx_curves_reads_the_event_files_and_writes_a_png(copy_run, tmp_path, capsys):
    scalars = curves.read_scalars(copy_run)
    assert [s for s, _, _ in scalars["train/loss"]] == [10, 20, 30, 40]
    assert [s for s, _, _ in scalars["eval/accuracy"]] == [20, 40]
    minutes = [m for _, m, _ in scalars["train/loss"]]
    assert minutes[0] >= 0 and minutes == sorted(minutes) and minutes[-1] < 10
    other = str(tmp_path / "second")
    shutil.copytree(copy_run, other)
    out = str(tmp_path / "curves.png")
    capsys.readouterr()
    code = cli.main(["curves", copy_run, other, "-o", out, "--metric", "accuracy", "--x", "steps"])
    assert code == 0 and capsys.readouterr().out.strip() == f"wrote {out}"
    with open(out, "rb") as f:
        assert _png_size(f.read()) == (1000, 400)
    assert cli.main(["curves", copy_run, "-o", out, "--metric", "bleu"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert errors == [
        "kerastx curves: error: --metric bleu: no run logged eval/bleu; logged: accuracy, "
        "loss, perplexity, token_accuracy"
    ]


def test_kerastx_curves_draws_references_and_the_runs_logged_anchors(copy_run, tmp_path, capsys):
    # A run that logged an anchor for its metric (as the language model logs
    # eval/anchor_xz_bits_per_byte) gets it drawn without being asked.
    run_dir = str(tmp_path / "anchored")
    shutil.copytree(copy_run, run_dir)
    with tf.summary.create_file_writer(os.path.join(run_dir, "logs")).as_default():
        for step in (20, 40):
            tf.summary.scalar("eval/anchor_chance_accuracy", 0.25, step=step)
    out = str(tmp_path / "c.png")
    result = curves.run([run_dir], out, metric="accuracy", references=["target = 0.9"])
    assert result["references"] == [("target", 0.9), ("chance", 0.25)]
    with open(out, "rb") as f:
        assert _png_size(f.read()) == (1000, 400)
    capsys.readouterr()
    for bad in ("0.9", "target=", "target=high", "=0.9"):
        assert cli.main(["curves", run_dir, "-o", out, "--reference", bad]) == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
        assert errors == [
            f"kerastx curves: error: --reference {bad!r}: expected LABEL=NUMBER, e.g. "
            "--reference 'target=26.5'"
        ]
