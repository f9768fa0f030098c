"""What a run tells its user: TensorBoard events, the step-level JSONL log, a progress line.

Only the chief writes. TensorBoard tags:
  train/loss, train/nll, train/perplexity, train/learning_rate, train/grad_norm,
  train/tokens_per_second, train/step_time, train/input_wait_share, train/padding_share,
  train/mfu, train/loss_scale, train/moe_dropped_share (MoE models);
  eval/<metric> for each evaluation metric, eval/samples (a text table),
  eval/attention/<n> (cross-attention maps of dev examples, images).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import tensorflow as tf

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

    def images(self, step: int, tag: str, images) -> None:
        """images: float tensor (N, H, W, 1|3) in [0, 1]."""
        if not self.enabled:
            return
        with self.writer.as_default(step=step):
            tf.summary.image(tag, images, max_outputs=int(images.shape[0]))
        self.writer.flush()

    def trace_on(self, logdir: str) -> None:
        if self.enabled:
            tf.profiler.experimental.start(logdir)

    def trace_off(self) -> None:
        if self.enabled:
            tf.profiler.experimental.stop()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress bar with ETA on a terminal; plain lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool = True, stream=None):
        self.total = total
        self.start_step = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()

    def update(self, step: int, metrics: dict, force_line: bool = False) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        frac = step / max(self.total, 1)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
        line = f"[{bar}] {step}/{self.total}  eta {_duration(eta)}  {shown}"
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


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
