"""The training loop: owns the model, the optimizer, the data position and the checkpoints.

Resuming is exact: a checkpoint holds the model, the optimizer, the trainer's step, the
data position (epoch, next batch index), the dropout RNG state (Keras seed generators are
variables of the model), the loss scale and the early-stopping state. Re-running the same
command restores all of it, and the data stream continues at the first batch that was not
consumed, so every step runs exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from kerastx.config import ExperimentConfig, write_resolved
from kerastx.errors import KerastxError
from kerastx.train import builders, summaries
from kerastx.train.checkpoints import Checkpoints, VariableBag
from kerastx.train.flops import matmul_rate, model_flops
from kerastx.train.optimizers import build_optimizer
from kerastx.train.schedules import WarmupSchedule
from kerastx.train.step import StepBuilder
from kerastx.train.strategy import is_chief, make_strategy

log = logging.getLogger("kerastx")


class Preempted(KerastxError):
    """SIGTERM arrived; a checkpoint was written. The CLI exits with code 75."""

    exit_code = 75


class NonFiniteLoss(KerastxError):
    """The loss became NaN or Inf and the policy is `fail` (or rollbacks ran out)."""


class Trainer:
    """Trains one experiment; see `run()`.

    Args:
        cfg: the resolved experiment.
        data: a `kerastx.data.DataModule` (built from `cfg` when None).
        strategy: a tf.distribute strategy (built from `cfg.distribution` when None).
        progress: bool. Show the progress line on stderr.
    """

    def __init__(self, cfg: ExperimentConfig, data=None, strategy=None, progress=True):
        self.cfg = cfg
        t = cfg.training
        keras.utils.set_random_seed(cfg.seed)
        if t.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy = strategy or make_strategy(cfg.distribution)
        self.chief = is_chief(self.strategy)
        if self.chief:
            write_resolved(cfg)
        if data is None:
            from kerastx.data import build_data

            data = build_data(cfg)
        self.data = data
        builders.set_precision(t.mixed_precision)
        with self.strategy.scope():
            self.model = builders.build_model(cfg, data)
            self.optimizer = build_optimizer(t)
            self.optimizer.build(self.model.trainable_variables)
            self.state = {
                name: tf.Variable(
                    value,
                    trainable=False,
                    name=name,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                for name, value in (
                    ("step", tf.constant(0, tf.int64)),
                    ("data_epoch", tf.constant(0, tf.int64)),
                    ("data_index", tf.constant(0, tf.int64)),
                    ("loss_scale", tf.constant(2.0**15 if t.mixed_precision == "float16" else 1.0)),
                    ("good_steps", tf.constant(0, tf.int64)),
                    ("best_value", tf.constant(math.inf)),
                    ("evals_since_best", tf.constant(0, tf.int64)),
                    ("rollbacks", tf.constant(0, tf.int64)),
                )
            }
        self.checkpoints = Checkpoints(
            cfg.run_dir,
            {
                "model": VariableBag(self.model.variables),
                "optimizer": VariableBag(self.optimizer.variables),
                **self.state,
            },
            self.state["step"],
            t.keep_checkpoints,
            chief=self.chief,
        )
        self.schedule = WarmupSchedule(
            t.learning_rate, t.warmup_steps, t.schedule, t.train_steps, t.min_learning_rate
        )
        self.steps = StepBuilder(
            self.model,
            self.optimizer,
            self.strategy,
            cfg.model.type,
            self.schedule,
            t.label_smoothing,
            t.clip_norm,
            t.gradient_accumulation,
            t.mixed_precision == "float16",
            t.jit_compile,
            self.state,
        )
        self.progress_enabled = progress and self.chief
        self._sigterm = False
        self.restored_from = None

    # -- state -------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self.state["step"].numpy())

    def _restore_or_init(self) -> None:
        self.restored_from = self.checkpoints.restore_latest()
        if self.restored_from is None and self.cfg.training.init_from:
            builders.init_from(self.model, self.optimizer, self.cfg.training)

    def _iterator(self):
        start = (int(self.state["data_epoch"].numpy()), int(self.state["data_index"].numpy()))
        dataset = self.strategy.distribute_datasets_from_function(
            self.data.train_dataset_fn(start=start)
        )
        return iter(dataset)

    # -- the loop ----------------------------------------------------------------------

    def _chunk(self, step: int) -> int:
        """Steps to run in the next call: up to the next log/checkpoint/eval/end boundary."""
        t, e = self.cfg.training, self.cfg.evaluation
        bounds = [
            t.train_steps,
            _next_multiple(step, t.checkpoint_every),
            _next_multiple(step, t.log_every),
            step + t.steps_per_execution,
        ]
        if e.every:
            bounds.append(_next_multiple(step, e.every))
        if t.profile_steps:
            for edge in (t.profile_steps[0] - 1, t.profile_steps[1]):
                if edge > step:
                    bounds.append(edge)
        return min(bounds) - step

    def run(self) -> dict:
        """Trains to `training.train_steps` (resuming if the run has checkpoints).

        Returns:
            dict with the last step, the last training metrics and evaluation results.

        Raises:
            Preempted: SIGTERM arrived (a checkpoint at the current step was written).
            NonFiniteLoss: NaN/Inf loss under the `fail` policy or too many rollbacks.
        """
        cfg, t = self.cfg, self.cfg.training
        self._restore_or_init()
        start_step = self.step
        journal = summaries.JsonlLog(cfg.run_dir, start_step, enabled=self.chief)
        board = summaries.Board(cfg.run_dir, enabled=self.chief)
        progress = summaries.Progress(t.train_steps, start_step, self.progress_enabled)
        if self.restored_from:
            progress.message(f"resumed from {self.restored_from} at step {start_step}")
        rate = matmul_rate()
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        iterator = self._iterator()
        window = _Window()
        last_eval: dict = {}
        profiling = False
        try:
            while self.step < t.train_steps:
                step = self.step
                if t.profile_steps and step + 1 == t.profile_steps[0]:
                    board.trace_on(os.path.join(cfg.run_dir, summaries.LOG_DIR))
                    profiling = True
                n = self._chunk(step)
                if window.steps == 0 and n > 1:
                    # First step of a logging window: fetch the input eagerly to time it.
                    stats, waited, elapsed = self.steps.probe(iterator)
                    window.waited += waited
                    window.probed += elapsed
                    n -= 1
                    if not self._log_steps(step, stats, journal):
                        iterator = self._non_finite(step + 1, journal, board, progress)
                        window = _Window()
                        continue
                    window.add(stats, elapsed, 1)
                    step = self.step
                t0 = time.perf_counter()
                stats = self.steps.train_fn(iterator, tf.constant(n, tf.int32))
                stats = {k: v.numpy() for k, v in stats.items()}
                elapsed = time.perf_counter() - t0
                bad_step = self._log_steps(step, stats, journal)
                if bad_step is not True:
                    iterator = self._non_finite(bad_step, journal, board, progress)
                    window = _Window()
                    continue
                window.add(stats, elapsed, n)
                step = self.step
                if profiling and step >= t.profile_steps[1]:
                    board.trace_off()
                    profiling = False
                if step % t.log_every == 0 or step == t.train_steps:
                    metrics = window.metrics(model_flops(self.model, cfg.model.type), rate)
                    metrics["learning_rate"] = float(stats["lr"][-1])
                    if t.mixed_precision == "float16":
                        metrics["loss_scale"] = float(stats["loss_scale"][-1])
                    board.scalars(step, metrics, "train")
                    progress.update(
                        step,
                        {"loss": metrics["loss"], "tok/s": round(metrics["tokens_per_second"])},
                    )
                    window = _Window()
                if step % t.checkpoint_every == 0 or step == t.train_steps:
                    self.checkpoints.save()
                if cfg.evaluation.every and step % cfg.evaluation.every == 0:
                    last_eval = self._evaluate(board, progress)
                    if self._should_stop():
                        progress.message(f"early stopping at step {step}")
                        break
                if self._sigterm:
                    self.checkpoints.save()
                    raise Preempted(
                        f"preempted by SIGTERM; checkpoint saved at step {step}; "
                        f"re-run the same command to resume"
                    )
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            if profiling:
                board.trace_off()
            journal.close()
        if self.step != start_step and (
            not cfg.evaluation.every or self.step % cfg.evaluation.every
        ):
            last_eval = self._evaluate(board, progress)
        board.close()
        progress.message(f"done at step {self.step}")
        return {"step": self.step, "eval": last_eval}

    # -- events ------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._sigterm = True

    @staticmethod
    def _log_steps(first_step: int, stats: dict, journal):
        """Writes the steps of one call up to the first non-finite loss.

        Returns:
            True if every loss was finite, else the first bad step.
        """
        records = _records(first_step, stats)
        for i, record in enumerate(records):
            if not math.isfinite(record["loss"]):
                journal.write(records[:i])
                return record["step"]
        journal.write(records)
        return True

    def _non_finite(self, bad_step: int, journal, board, progress):
        t = self.cfg.training
        latest = self.checkpoints.latest_step()
        if t.nan_policy == "fail":
            kept = f"; the last good checkpoint (step {latest}) is kept" if latest else ""
            raise NonFiniteLoss(
                f"non-finite loss at step {bad_step}{kept} (training.nan_policy=fail)"
            )
        rollbacks = int(self.state["rollbacks"].numpy()) + 1
        if rollbacks > t.max_rollbacks:
            raise NonFiniteLoss(
                f"non-finite loss at step {bad_step} after {t.max_rollbacks} "
                f"rollbacks (training.max_rollbacks)"
            )
        if latest is None:
            raise NonFiniteLoss(
                f"non-finite loss at step {bad_step} and no checkpoint to "
                f"roll back to (training.nan_policy=rollback)"
            )
        # Keep the data position: the batches that led to the NaN are skipped.
        epoch, index = self.state["data_epoch"].numpy(), self.state["data_index"].numpy()
        self.checkpoints.restore_latest()
        self.state["data_epoch"].assign(epoch)
        self.state["data_index"].assign(index)
        self.state["rollbacks"].assign(rollbacks)
        journal.rewind(self.step)
        progress.message(
            f"non-finite loss at step {bad_step}: rolled back to step "
            f"{self.step}, skipping the batches up to epoch {epoch} index "
            f"{index} (rollback {rollbacks}/{t.max_rollbacks})"
        )
        board.scalars(self.step, {"rollbacks": rollbacks}, "train")
        return self._iterator()

    def _evaluate(self, board, progress) -> dict:
        from kerastx import evaluate

        results = evaluate.evaluate_during_training(self, board)
        metric = self.cfg.evaluation.best_metric
        value = results.get(metric)
        if value is not None:
            better = _is_better(metric, value, float(self.state["best_value"].numpy()))
            if better:
                self.state["best_value"].assign(_signed(metric, value))
                self.state["evals_since_best"].assign(0)
                self.checkpoints.save(best=True)
            else:
                self.state["evals_since_best"].assign_add(1)
        shown = {k: round(v, 4) for k, v in results.items() if isinstance(v, float)}
        progress.message(f"step {self.step} eval: {shown}")
        return results

    def _should_stop(self) -> bool:
        patience = self.cfg.evaluation.early_stopping_patience
        return bool(patience) and int(self.state["evals_since_best"].numpy()) >= patience


HIGHER_IS_BETTER = ("token_accuracy", "bleu", "chrf", "accuracy")


def _signed(metric: str, value: float) -> float:
    """Stored so that lower is always better."""
    return -value if metric in HIGHER_IS_BETTER else value


def _is_better(metric: str, value: float, best_signed: float) -> bool:
    return _signed(metric, value) < best_signed


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _records(first_step: int, stats: dict) -> list[dict]:
    """One JSON record per step of a train_fn call."""
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
            }
        )
    return out


class _Window:
    """Accumulates statistics between two logged steps."""

    def __init__(self):
        self.sums: dict = {}
        self.seconds = 0.0
        self.waited = 0.0
        self.probed = 0.0
        self.steps = 0
        self.norms: list = []

    def add(self, stats: dict, seconds: float, steps: int) -> None:
        for key, values in stats.items():
            if key in ("grad_norm", "lr", "loss_scale", "finite"):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))
        self.norms.extend(float(v) for v in stats["grad_norm"])
        self.seconds += seconds
        self.steps += steps

    def metrics(self, flops_fn, rate: float) -> dict:
        s = self.sums
        tokens = max(s.get("tokens", 0.0), 1.0)
        loss = s.get("loss_sum", 0.0) / tokens
        nll = s.get("nll_sum", 0.0) / tokens
        real = s.get("real_slots", 0.0)
        seconds = max(self.seconds, 1e-9)
        flops = flops_fn(s)
        return {
            "loss": loss,
            "nll": nll,
            "perplexity": math.exp(min(nll, 50.0)),
            "token_accuracy": s.get("correct", 0.0) / tokens,
            "grad_norm": float(np.mean(self.norms)) if self.norms else 0.0,
            "tokens_per_second": real / seconds,
            "step_time": seconds / max(self.steps, 1),
            # Measured on the first step of each window (see StepBuilder.probe).
            "input_wait_share": self.waited / self.probed if self.probed else 0.0,
            "padding_share": 1.0 - real / max(s.get("slots", 0.0), 1.0),
            "mfu": flops / seconds / rate if rate else 0.0,
            "aux_loss": s.get("aux_loss", 0.0) / tokens,
        }
