"""What a run tells its user: TensorBoard events, the step-level JSONL log, a progress line.

Only the chief writes. TensorBoard (`run_dir/logs`, `make tensorboard`) gets these tags;
`tests/train/test_summaries.py` reads them back from the event files.

Every `training.log_every` steps and at the last step (means over the window of steps
since the previous log):
  train/loss             label-smoothed cross-entropy per target token (the objective)
  train/nll              negative log-likelihood per target token
  train/perplexity       exp(nll)
  train/token_accuracy   share of target tokens whose argmax is right
  train/grad_norm        mean over the window's applied steps of the global norm of the
                         true mean gradient (all replicas and micro-batches), before
                         clipping
  train/learning_rate    learning rate of the window's last step
  train/padding_share    share of padding in the batches' token slots (source + target)
  train/tokens_per_second  real (non-padding) source + target tokens per second
  train/step_time        seconds per optimizer step
  train/input_wait_share share of the window's first step spent waiting for its batch
  train/mfu              model FLOPs per second / matmul FLOP/s measured at start
  train/loss_scale       float16 only: the dynamic loss scale of the last step
  train/aux_loss         mixture-of-experts models only: auxiliary losses per token
  train/moe_dropped_share  mixture-of-experts models only: token-expert assignments
                         dropped over capacity / assignments requested
  train/rollbacks        after a NaN rollback (training.nan_policy=rollback): the count
The four timing scalars (tokens_per_second, step_time, input_wait_share, mfu) leave out
calls that traced (compiled) a step function; a window made only of such calls (the
first one of a process) has none of them.

At every evaluation (`evaluation.every` steps and the last step), dev set:
  eval/loss, eval/perplexity, eval/token_accuracy   teacher-forced
  eval/<metric>          each task metric from greedy decoding (wer, per, bleu, chrf,
                         accuracy: `evaluation.metrics` or the task's default)
  eval/samples           text: a markdown table of `evaluation.num_samples` examples
                         (source | reference(s) | hypothesis)
  eval/completions       text: each of `evaluation.prompts` and its continuation with
                         the `decoding:` settings (top-p samples with strategy: sample)
  eval/bits_per_byte     language models: with eval/anchor_xz_bits_per_byte and
                         eval/anchor_gzip_bits_per_byte on the same dev text
  eval/attention/<i>     image, i < `evaluation.attention_images` (seq2seq models): the
                         last decoder layer's cross-attention of dev example i in a
                         teacher-forced pass, averaged over heads, as a heat map
                         (`kerastx.plots`): source tokens + EOS on x, the reference
                         tokens + EOS on y (the token written at each row), the token
                         strings as tick labels, a colour bar, the title naming the layer
                         ("layer 6/6 cross-attention, mean of 8 heads"); RGBA
  eval/attention_heads/<i>  image: the same layer and example, one panel per head
                         ("... head 2/8"), one colour scale

`training.profile_steps: [first, last]` writes a profiler trace of those steps under
`run_dir/logs/plugins/profile/` (TensorBoard's Profile tab needs the
tensorboard-plugin-profile package); if the profiler cannot start, a warning is logged
and training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

log = logging.getLogger("kerastx")

LOG_DIR = "logs"
JSONL = "train_log.jsonl"


class JsonlLog:
    """Appends one JSON object per step to `run_dir/train_log.jsonl`.

    On resume, lines past the restored step (written after the last checkpoint by the
    interrupted run) are moved to `train_log.jsonl.discarded` so the log holds every
    step exactly once.
    """

    def __init__(self, run_dir: str, resume_step: int, enabled: bool = True):
        self.path = os.path.join(run_dir, JSONL)
        self.enabled = enabled
        self._file = None
        self.rewind(resume_step)

    def rewind(self, step: int) -> None:
        """Keeps the records of steps <= `step`; later ones go to the .discarded file."""
        if not self.enabled:
            return
        self.close()
        resume_step = step
        kept, dropped = [], []
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        dropped.append(line)  # a line cut by a kill mid-write
                        continue
                    (kept if record.get("step", 0) <= resume_step else dropped).append(line)
        if dropped:
            with open(self.path + ".discarded", "a", encoding="utf-8") as f:
                f.writelines(line if line.endswith("\n") else line + "\n" for line in dropped)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def write(self, records: list[dict]) -> None:
        if not self.enabled:
            return
        for record in records:
            self._file.write(json.dumps(record, sort_keys=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Board:
    """TensorBoard writer of one run (a no-op on non-chief workers)."""

    def __init__(self, run_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.writer = (
            tf.summary.create_file_writer(os.path.join(run_dir, LOG_DIR)) if enabled else None
        )

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        if not self.enabled:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    tf.summary.scalar(f"{prefix}/{name}", float(value))
        self.writer.flush()

    def text(self, step: int, tag: str, markdown: str) -> None:
        if not self.enabled:
            return
        with self.writer.as_default(step=step):
            tf.summary.text(tag, markdown)
        self.writer.flush()

    def completions(self, step: int, items: list[dict]) -> None:
        """Writes `eval/completions`: each prompt and its continuation (`evaluation.prompts`)."""
        self.text(step, "eval/completions", completions_markdown(items))

    def image(self, step: int, tag: str, image, description: str | None = None) -> None:
        """Writes one image: a float array (H, W) or (H, W, 1|3|4) with values in [0, 1],
        or a uint8 array (H, W, 1|3|4) (a rendered figure, `plots.figure_rgba`)."""
        if not self.enabled:
            return
        if getattr(image, "dtype", None) != np.uint8:
            image = tf.convert_to_tensor(image, tf.float32)
        image = tf.convert_to_tensor(image)
        if image.shape.rank == 2:
            image = image[:, :, None]
        with self.writer.as_default(step=step):
            tf.summary.image(tag, image[None], max_outputs=1, description=description)
        self.writer.flush()

    def attention(self, step: int, index: int, item: dict) -> None:
        """Writes `eval/attention/<index>` (mean over heads) and
        `eval/attention_heads/<index>` (one panel per head) of one example.

        Args:
            step: int. The training step.
            index: int. The dev example's index.
            item: dict from `kerastx.evaluate.attention_maps` ("heads" `(N, T, S)`,
                "source_tokens", "output_tokens", "layer", "num_layers", "source",
                "target").
        """
        if not self.enabled:
            return
        from kerastx import plots

        heads = np.asarray(item["heads"], np.float32)
        count = heads.shape[0]
        layer, layers = item["layer"], item["num_layers"]
        tokens = (item["source_tokens"], item["output_tokens"])
        text = f"source: {item['source']}  →  reference: {item['target']}"
        mean = plots.attention_figure(
            heads.mean(axis=0),
            *tokens,
            [plots.attention_title(layer, layers, None, count)],
            suptitle=text,
        )
        per_head = plots.attention_figure(
            heads,
            *tokens,
            [plots.attention_title(layer, layers, h + 1, count) for h in range(count)],
            columns=min(count, 4),
            suptitle=text,
        )
        description = (
            f"source: {item['source']}  \nreference: {item['target']}  \nteacher-forced; "
            "x: source tokens + EOS; y: the reference token written at each step (+ EOS)"
        )
        self.image(step, f"eval/attention/{index}", plots.figure_rgba(mean), description)
        self.image(step, f"eval/attention_heads/{index}", plots.figure_rgba(per_head), description)

    def trace_on(self, logdir: str) -> bool:
        """Starts the TensorFlow profiler writing under `logdir/plugins/profile`.

        Returns:
            Whether it started; when it cannot (no profiler in this TensorFlow build,
            or one already running) a warning is logged and training goes on.
        """
        if not self.enabled:
            return False
        try:
            tf.profiler.experimental.start(logdir)
        except Exception as err:  # noqa: BLE001 - profiling must never stop training
            log.warning("training.profile_steps: the profiler did not start (%s); no trace", err)
            return False
        try:
            import tensorboard_plugin_profile  # noqa: F401
        except ImportError:
            log.info(
                "training.profile_steps: writing a trace to %s; install "
                "tensorboard-plugin-profile to view it in TensorBoard",
                logdir,
            )
        return True

    def trace_off(self) -> None:
        """Stops the profiler (writes the trace)."""
        if not self.enabled:
            return
        try:
            tf.profiler.experimental.stop()
        except Exception as err:  # noqa: BLE001
            log.warning("training.profile_steps: the profiler did not stop cleanly (%s)", err)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress bar with ETA on a terminal; plain lines otherwise.

    The ETA leaves out compilation: the first call of a process traces (compiles) the
    step functions, which can take longer than many minutes of steps, so the rate is
    measured from the first update on (its time and step are the start) and no ETA is
    shown before a second update gives one.

    Args:
        total: int. The last step (`training.train_steps`).
        start: int. The step the session starts at (a resumed run's).
        enabled: bool. Write anything at all.
        stream: where to write (default: stderr).
        clock: callable returning seconds (default: `time.monotonic`; tests pass a fake).
    """

    def __init__(self, total: int, start: int, enabled: bool = True, stream=None, clock=None):
        self.total = total
        self.start_step = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.clock = clock or time.monotonic
        self._since = None  # (seconds, step) of the first update: compilation is behind

    def eta(self, step: int) -> float | None:
        """Seconds left at `step` from the rate since the first update; None before."""
        if self._since is None:
            return None
        seconds, first = self._since
        if step <= first:
            return None
        return (self.clock() - seconds) / (step - first) * max(self.total - step, 0)

    def update(self, step: int, metrics: dict, force_line: bool = False) -> None:
        if not self.enabled:
            return
        eta = self.eta(step)
        if self._since is None:
            self._since = (self.clock(), step)
        frac = step / max(self.total, 1)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        eta_text = f"  eta {_duration(eta)}" if eta is not None else ""
        line = f"[{bar}] {step}/{self.total}{eta_text}  {shown}"
        if self.tty and not force_line:
            self.stream.write("\r" + line[:200].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
        self.stream.write(text + "\n")
        self.stream.flush()


def completions_markdown(items: list[dict]) -> str:
    """Prompts and continuations as markdown: per item the prompt (as a Python string
    literal, so its newlines show) and prompt + continuation as an indented code block
    (indentation, not a ``` fence, so no text of the output can end the block)."""
    blocks = []
    for i, item in enumerate(items, 1):
        text = item["prompt"] + item["completion"]
        code = "\n".join("    " + line for line in text.split("\n"))
        blocks.append(f"**{i}.** prompt `{item['prompt']!r}`:\n\n{code}")
    return "\n\n".join(blocks)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_records(first_step: int, stats: dict) -> list[dict]:
    """One JSONL record per step of a `StepBuilder` call (see `JsonlLog`).

    Fields: step; loss and nll (per target token); lr; grad_norm (global norm of the mean
    gradient, before clipping; inf/nan on a skipped float16 step); tokens (target) and
    source_tokens (real, summed over replicas and micro-batches); examples; ids_hash (of
    the example ids, to compare data order between runs); finite_grads (false: the update
    was skipped); loss_scale (the scale used, 1 outside float16); for mixture-of-experts
    models moe_routed and moe_dropped (token-expert assignments, summed over layers,
    micro-batches and replicas).
    """
    out = []
    for i in range(len(stats["loss_sum"])):
        tokens = float(stats["tokens"][i])
        out.append(
            {
                "step": first_step + i + 1,
                "loss": float(stats["loss_sum"][i]) / max(tokens, 1.0),
                "nll": float(stats["nll_sum"][i]) / max(tokens, 1.0),
                "lr": float(stats["lr"][i]),
                "grad_norm": float(stats["grad_norm"][i]),
                "tokens": int(tokens),
                "source_tokens": int(stats["source_tokens"][i]),
                "examples": int(stats["examples"][i]),
                "ids_hash": int(stats["id_hash"][i]),
                "finite_grads": bool(stats["finite"][i]),
                "loss_scale": float(stats["loss_scale"][i]),
            }
        )
        if "moe_routed" in stats:
            out[-1]["moe_routed"] = float(stats["moe_routed"][i])
            out[-1]["moe_dropped"] = float(stats["moe_dropped"][i])
    return out


class Window:
    """Accumulates statistics between two logged steps.

    Calls that traced (compiled) a function are counted in the loss and accuracy but not
    in the timing scalars (tokens/s, step time, MFU, input wait): their time is mostly
    compilation. A window made only of such calls (the first one of a process) has no
    timing scalars.
    """

    def __init__(self):
        self.sums: dict = {}
        self.timed: dict = {}  # sums over the timed calls only
        self.seconds = 0.0
        self.waited = 0.0
        self.probed = 0.0
        self.steps = 0
        self.timed_steps = 0
        self.norms: list = []

    def add(self, stats: dict, seconds: float, steps: int, timed: bool = True) -> None:
        for key, values in stats.items():
            if key in ("grad_norm", "lr", "loss_scale", "finite"):
                continue
            total = float(np.sum(values))
            self.sums[key] = self.sums.get(key, 0.0) + total
            if timed:
                self.timed[key] = self.timed.get(key, 0.0) + total
        self.norms.extend(float(v) for v in stats["grad_norm"])
        self.steps += steps
        if timed:
            self.seconds += seconds
            self.timed_steps += steps

    def metrics(self, flops_fn, rate: float) -> dict:
        """The `train/` scalars of the window (see `kerastx.train.summaries`)."""
        s = self.sums
        tokens = max(s.get("tokens", 0.0), 1.0)
        loss = s.get("loss_sum", 0.0) / tokens
        nll = s.get("nll_sum", 0.0) / tokens
        real = s.get("real_slots", 0.0)
        # Skipped float16 steps have a non-finite norm; the mean is over applied steps.
        norms = [v for v in self.norms if math.isfinite(v)]
        out = {
            "loss": loss,
            "nll": nll,
            "perplexity": math.exp(min(nll, 50.0)),
            "token_accuracy": s.get("correct", 0.0) / tokens,
            "grad_norm": float(np.mean(norms)) if norms else float("nan"),
            "padding_share": 1.0 - real / max(s.get("slots", 0.0), 1.0),
        }
        if self.timed_steps:
            seconds = max(self.seconds, 1e-9)
            out["tokens_per_second"] = self.timed.get("real_slots", 0.0) / seconds
            out["step_time"] = seconds / self.timed_steps
            out["mfu"] = flops_fn(self.timed) / seconds / rate if rate else 0.0
        if self.probed:
            # Measured on the first step of each window (see StepBuilder.probe).
            out["input_wait_share"] = self.waited / self.probed
        if "moe_routed" in s:
            out["aux_loss"] = s.get("aux_loss", 0.0) / tokens
            out["moe_dropped_share"] = s["moe_dropped"] / max(s["moe_routed"], 1.0)
        return out
