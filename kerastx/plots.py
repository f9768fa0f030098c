"""Pictures a user can read: attention heat maps and training curves (matplotlib, Agg).

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never through
`pyplot`: no display, no global figure state, nothing to close. Layout is matplotlib's
constrained layout, so tick labels, titles and the colour bar never overlap, and a
figure's size in pixels is its size in inches times `DPI` (no tight cropping).

Attention maps (`attention_figure`): one panel per map, source tokens on x (columns),
output tokens on y (rows, the token written at that step), the token strings as tick
labels (every token, up to about 64 each way), one colour scale shared by all panels
(0 to the largest weight shown) and a title per panel that names the layer and head
(`attention_title`: "layer 3/3 cross-attention, mean of 4 heads"). Spaces show as "␣",
long tokens are cut with "…", and labels are drawn as plain text (a "$" is not math).

Training curves (`curves_figure`): train loss and a dev metric against wall minutes or
steps, one line per run, with a legend.

Outputs: `figure_png` (PNG bytes) and `figure_rgba` (`(H, W, 4)` uint8, what
`tf.summary.image` takes).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
MAX_LABEL = 12  # characters of a tick label; longer tokens end in "…"
CMAP = "viridis"
_FONT = 8  # points: tick labels
_TITLE_FONT = 9


def token_label(token: str) -> str:
    """A token as a tick label: spaces as "␣", control characters as "·", at most
    `MAX_LABEL` characters ("…" ends a cut one); the empty token as "∅"."""
    if token == "":
        return "∅"
    shown = "".join("␣" if c == " " else "·" if ord(c) < 32 else c for c in token)
    return shown if len(shown) <= MAX_LABEL else shown[: MAX_LABEL - 1] + "…"


def attention_title(layer: int, num_layers: int, head: int | None, num_heads: int) -> str:
    """The panel title: "layer 3/3 cross-attention, mean of 4 heads" (`head` None) or
    "layer 3/3 cross-attention, head 2/4" (`layer`, `head` counted from 1)."""
    which = f"mean of {num_heads} heads" if head is None else f"head {head}/{num_heads}"
    return f"layer {layer}/{num_layers} cross-attention, {which}"


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with "…"."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def _cell_inches(longest: int) -> float:
    """Side of one heat-map cell: large for a few tokens, 0.16 in (11.5 pt, room for
    an 8 pt label) from about 25 tokens on."""
    return float(np.clip(4.0 / max(longest, 1), 0.16, 0.4))


def _label_inches(labels: list[str]) -> float:
    """Room for a column of tick labels of 8 pt (about 0.6 em a character)."""
    return 0.2 + 0.6 * _FONT / 72 * max((len(s) for s in labels), default=1)


def attention_figure(
    maps,
    source_tokens: list[str],
    output_tokens: list[str],
    titles: list[str],
    columns: int | None = None,
    suptitle: str | None = None,
) -> Figure:
    """Heat maps of attention weights, one panel per map, with one shared colour bar.

    Args:
        maps: float array `(P, T, S)` (or `(T, S)` for one panel): per panel, each output
            token's weights over the source tokens.
        source_tokens: list of `S` str. The x tick labels (columns).
        output_tokens: list of `T` str. The y tick labels (rows, top to bottom).
        titles: list of `P` str. Each panel's title (see `attention_title`).
        columns: int or None. Panels per row (default: all in one row up to 4).
        suptitle: str or None. A line over all panels (e.g. the input and output text).

    Returns:
        A `matplotlib.figure.Figure` on an Agg canvas; see `figure_png`, `figure_rgba`.
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    count, rows_t, cols_s = maps.shape
    if len(source_tokens) != cols_s or len(output_tokens) != rows_t or len(titles) != count:
        raise ValueError(
            f"attention_figure: maps {maps.shape} need {cols_s} source tokens, {rows_t} "
            f"output tokens and {count} titles; got {len(source_tokens)}, "
            f"{len(output_tokens)}, {len(titles)}"
        )
    xlabels = [token_label(t) for t in source_tokens]
    ylabels = [token_label(t) for t in output_tokens]
    columns = max(1, min(columns or min(count, 4), count))
    grid_rows = math.ceil(count / columns)
    cell = _cell_inches(max(rows_t, cols_s))
    # A panel: the cells, the y labels on its left, the x labels (vertical) below, the
    # axis names and the title; the figure adds the colour bar and the suptitle.
    title_width = max(len(t) for t in titles) * 0.6 * _TITLE_FONT / 72 + 0.2
    panel_w = max(cols_s * cell + _label_inches(ylabels) + 0.35, title_width)
    panel_h = rows_t * cell + _label_inches(xlabels) + 0.35 + 0.35
    width = columns * panel_w + 1.1
    height = grid_rows * panel_h + (0.45 if suptitle else 0.1)
    fig = Figure(figsize=(max(width, 3.0), max(height, 2.2)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    vmax = float(maps.max()) if maps.size and maps.max() > 0 else 1.0
    axes = []
    image = None
    for p in range(count):
        ax = fig.add_subplot(grid_rows, columns, p + 1)
        axes.append(ax)
        image = ax.imshow(
            maps[p], cmap=CMAP, vmin=0.0, vmax=vmax, aspect="equal", interpolation="nearest"
        )
        ax.set_xticks(range(cols_s))
        ax.set_xticklabels(xlabels, rotation=90, fontsize=_FONT, parse_math=False)
        ax.set_yticks(range(rows_t))
        ax.set_yticklabels(ylabels, fontsize=_FONT, parse_math=False)
        ax.tick_params(length=2, pad=1)
        ax.set_xlabel("source tokens", fontsize=_FONT)
        ax.set_ylabel("output tokens", fontsize=_FONT)
        ax.set_title(titles[p], fontsize=_TITLE_FONT, parse_math=False)
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, max(0.5, 3.0 / height)), pad=0.02)
    bar.set_label("attention weight", fontsize=_FONT)
    bar.ax.tick_params(labelsize=_FONT)
    if suptitle:
        chars = int(fig.get_figwidth() * 72 / (0.6 * _TITLE_FONT)) - 2
        fig.suptitle(shorten(suptitle, chars), fontsize=_TITLE_FONT, parse_math=False)
    return fig


def curves_figure(
    runs: list[dict],
    metric: str,
    x: str = "minutes",
    references: list[tuple[str, float]] | None = None,
) -> Figure:
    """Train loss and a dev metric of several runs, side by side, one line per run.

    Args:
        runs: list of dicts: "name" (the legend entry), "loss" and "metric": each a list
            of `(steps, minutes, value)` tuples (the metric's may be empty).
        metric: str. The dev metric's name (the right panel's y label).
        x: str. "minutes" (wall minutes) or "steps".
        references: list of `(label, value)`: horizontal dashed lines on the metric
            panel (an anchor such as `xz -9`, a published figure, a target).

    Returns:
        A `matplotlib.figure.Figure` on an Agg canvas.
    """
    if x not in ("minutes", "steps"):
        raise ValueError(f"curves_figure: x must be 'minutes' or 'steps'; got {x!r}")
    column = 1 if x == "minutes" else 0
    fig = Figure(figsize=(10.0, 4.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours):
        for ax, key, marker in ((loss_ax, "loss", None), (metric_ax, "metric", "o")):
            points = run[key]
            if points:
                xs = [p[column] for p in points]
                ys = [p[2] for p in points]
                ax.plot(xs, ys, color=colour, marker=marker, markersize=3, label=run["name"])
    for i, (label, value) in enumerate(references or []):
        metric_ax.axhline(
            value, color="0.35", linestyle=("--", ":", "-.")[i % 3], linewidth=1.0,
            label=f"{label}: {value:.4g}",
        )  # fmt: skip
    x_label = "wall minutes" if x == "minutes" else "steps"
    loss_ax.set(xlabel=x_label, ylabel="train loss (per target token)", title="train loss")
    metric_ax.set(xlabel=x_label, ylabel=f"dev {metric}", title=f"dev {metric}")
    for ax in (loss_ax, metric_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=_FONT)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (`DPI` dots per inch; the figure's own size)."""
    buffer = io.BytesIO()
    with _quiet_glyphs():
        fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def figure_rgba(fig: Figure) -> np.ndarray:
    """The figure as a `(H, W, 4)` uint8 RGBA array (for `tf.summary.image`)."""
    canvas = fig.canvas
    with _quiet_glyphs():
        canvas.draw()
    return np.asarray(canvas.buffer_rgba(), np.uint8).copy()


@contextlib.contextmanager
def _quiet_glyphs():
    """Tokens in scripts the default font lacks draw as boxes; matplotlib's warning per
    missing glyph would only repeat that in the training log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield
