"""`kerastx curves RUN [RUN...] -o FILE.png`: training curves of runs in one picture.

Read from each run's TensorBoard event files (`RUN/logs/events.out.tfevents.*`, see
`kerastx.train.summaries`): `train/loss` (the window means written every
`training.log_every` steps) and `eval/<metric>` (each dev evaluation), with the wall
time of each event. The step-level `train_log.jsonl` holds no times and no dev metrics,
so the event files are the one source of both.

Wall minutes count the time of each training session (one event file per process:
from the writer's creation to its last event) and add the sessions up, so the hours
between a stopped run and its resume are not counted. A step written by several
sessions (a resume repeats the steps after its checkpoint) keeps the last session's
value and time.
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf

from kerastx import plots
from kerastx.errors import KerastxError

LOSS_TAG = "train/loss"


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar of a run's event files.

    Returns:
        `{tag: [(step, minutes, value), ...]}` sorted by step; minutes as in the module
        docstring.

    Raises:
        KerastxError: no such directory, or no event files in it.
    """
    if not os.path.isdir(run_dir):
        raise KerastxError(f"{run_dir}: no such run directory")
    files = sorted(
        glob.glob(os.path.join(run_dir, "logs", "events.out.tfevents.*")), key=_file_start
    )
    if not files:
        raise KerastxError(
            f"{run_dir}: no TensorBoard event files in {os.path.join(run_dir, 'logs')} "
            "(train the run first: kerastx train ...)"
        )
    out: dict[str, dict[int, tuple[float, float]]] = {}
    plugins: dict[str, str] = {}  # tag -> plugin (an event file names it once per tag)
    offset = 0.0  # seconds of the sessions before this file
    for path in files:
        start = last = None
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            start = event.wall_time if start is None else start
            last = event.wall_time
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                plugins[value.tag] = plugin = plugin or plugins.get(value.tag, "")
                number = _scalar(value, plugin)
                if number is not None:
                    minutes = (offset + event.wall_time - start) / 60.0
                    out.setdefault(value.tag, {})[int(event.step)] = (minutes, number)
        if start is not None:
            offset += last - start
    return {
        tag: [(step, m, v) for step, (m, v) in sorted(by_step.items())]
        for tag, by_step in out.items()
    }


def _file_start(path: str) -> tuple[float, str]:
    """Event files sort by the creation time in their name (`...tfevents.<time>.host...`)."""
    parts = os.path.basename(path).split(".")
    try:
        return float(parts[3]), path
    except (IndexError, ValueError):
        return 0.0, path


def _scalar(value, plugin: str) -> float | None:
    """A scalar summary's float (TF2 writes scalars as tensors), or None for the rest."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and plugin == "scalars":
        return float(tf.make_ndarray(value.tensor))
    return None


ANCHOR_PREFIX = "eval/anchor_"


def run(
    run_dirs: list[str],
    output: str,
    metric: str | None = None,
    x: str = "minutes",
    references: list[str] | None = None,
) -> dict:
    """Plots train loss and a dev metric of runs against wall minutes or steps; writes a PNG.

    The metric panel also draws, as dashed lines, each `LABEL=VALUE` of `references` and
    the anchors the runs logged for the metric (`eval/anchor_<name>_<metric>`, e.g. the
    language model's `anchor_xz_bits_per_byte`: the last value, once per distinct value).

    Args:
        run_dirs: list of str. Run directories (one line each; the legend names them by
            their directory name, or their path where names repeat).
        output: str. The PNG file.
        metric: str or None. The dev metric (`eval/<metric>`; default: the first run's
            `evaluation.best_metric` when it was logged, else `loss`).
        x: str. "minutes" or "steps".
        references: list of str or None. `LABEL=VALUE` lines (`--reference`).

    Returns:
        dict: "output", "metric", "runs" (name -> number of loss and metric points),
        "references" (the `(label, value)` lines drawn).

    Raises:
        KerastxError: a run without event files, a metric no run logged, a reference
            that is not LABEL=NUMBER, an unwritable output.
    """
    if x not in ("minutes", "steps"):
        raise KerastxError(f"--x: must be minutes or steps; got {x!r}")
    lines = [_reference(text) for text in references or []]
    scalars = [read_scalars(d) for d in run_dirs]
    if metric is None:
        metric = _default_metric(run_dirs[0], scalars[0])
    if not any(f"eval/{metric}" in s for s in scalars):
        logged = sorted({t.split("/", 1)[1] for s in scalars for t in s if t.startswith("eval/")})
        shown = ", ".join(logged) if logged else "none (no dev evaluation ran)"
        raise KerastxError(f"--metric {metric}: no run logged eval/{metric}; logged: {shown}")
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(d) for d in run_dirs]
    series = [
        {"name": name, "loss": s.get(LOSS_TAG, []), "metric": s.get(f"eval/{metric}", [])}
        for name, s in zip(names, scalars)
    ]
    suffix = f"_{metric}"
    for s in scalars:
        for tag, points in sorted(s.items()):
            if tag.startswith(ANCHOR_PREFIX) and tag.endswith(suffix) and points:
                label = tag[len(ANCHOR_PREFIX) : -len(suffix)]
                line = (label, points[-1][2])
                if label and line not in lines:
                    lines.append(line)
    png = plots.figure_png(plots.curves_figure(series, metric, x, lines))
    try:
        with open(output, "wb") as f:
            f.write(png)
    except OSError as err:
        raise KerastxError(f"{output}: cannot write the picture ({err.strerror})") from None
    return {
        "output": os.path.abspath(output),
        "metric": metric,
        "runs": {s["name"]: (len(s["loss"]), len(s["metric"])) for s in series},
        "references": lines,
    }


def _reference(text: str) -> tuple[str, float]:
    """`--reference "xz -9=1.69"` -> ("xz -9", 1.69): the value after the last `=`."""
    label, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not label.strip() or number is None or number != number:
        raise KerastxError(
            f"--reference {text!r}: expected LABEL=NUMBER, e.g. --reference 'target=26.5'"
        )
    return label.strip(), number


def _default_metric(run_dir: str, scalars: dict) -> str:
    """The run's `evaluation.best_metric` if it was logged, else loss."""
    from kerastx import runs

    try:
        best = runs.load_config(run_dir).evaluation.best_metric
    except KerastxError:
        best = None
    return best if best and f"eval/{best}" in scalars else "loss"
