"""The training loop: owns the model, the optimizer, the data position and the checkpoints.

Resuming is exact: a checkpoint holds the model, the optimizer, the trainer's step, the
data position (epoch, next batch index), the dropout RNG state (Keras seed generators are
variables of the model), the loss scale and the early-stopping state. Re-running the same
command restores all of it, and the data stream continues at the first batch that was not
consumed, so every step runs exactly once.

Order at a step boundary: log, evaluate (best checkpoint, early-stopping count), then
save, so a checkpoint at an evaluation step already holds that evaluation's outcome. A
SIGTERM during an evaluation abandons it, saves, and exits; the resumed run evaluates at
that step first (`evaluated_step` records the last finished evaluation). A run that is
complete (`train_steps` reached, or stopped early) does nothing when run again.
"""

from __future__ import annotations

import logging
import math
import os
import signal

import keras
import tensorflow as tf

from kerastx.config import ExperimentConfig, write_resolved
from kerastx.errors import KerastxError
from kerastx.train import builders, memory, summaries
from kerastx.train.checkpoints import Checkpoints, VariableBag, variable_manifest
from kerastx.train.flops import matmul_rate, model_flops
from kerastx.train.optimizers import build_optimizer
from kerastx.train.schedules import WarmupSchedule
from kerastx.train.step import StepBuilder
from kerastx.train.strategy import is_chief, make_strategy

log = logging.getLogger("kerastx")


class Preempted(KerastxError):
    """SIGTERM arrived; a checkpoint was written. The CLI exits with code 75."""

    exit_code = 75


class OutOfMemory(KerastxError):
    """A training step (or an evaluation) ran out of memory: one line with what to change."""


class NonFiniteLoss(KerastxError):
    """The loss became NaN or Inf and the policy is `fail` (or rollbacks ran out)."""


class _Stop(Exception):
    """Internal: leave the training loop (early stopping) with the last eval results."""

    def __init__(self, results: dict):
        super().__init__("early stopping")
        self.results = results


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
                    ("evaluated_step", tf.constant(0, tf.int64)),
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
            manifest=variable_manifest(self.model),
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
        self._running = (0, 1, (0, 0))  # the step call in flight: (step, steps, position)

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

    def _eval_point(self, step: int) -> bool:
        """Whether the dev set is evaluated after `step` (every `evaluation.every`, and last)."""
        every = self.cfg.evaluation.every
        return step > 0 and (
            step == self.cfg.training.train_steps or bool(every and step % every == 0)
        )

    def _eval_pending(self) -> bool:
        """The evaluation at the current step was interrupted (SIGTERM) and must run."""
        step = self.step
        return self._eval_point(step) and int(self.state["evaluated_step"].numpy()) < step

    def completion(self) -> str | None:
        """Why the restored run has nothing left to do, or None if it has."""
        t, e = self.cfg.training, self.cfg.evaluation
        if self._eval_pending():
            return None
        if self._should_stop():
            return (
                f"run is complete: stopped early at step {self.step} after "
                f"{int(self.state['evals_since_best'].numpy())} evaluations without "
                f"improvement of {e.best_metric} (evaluation.early_stopping_patience="
                f"{e.early_stopping_patience}); nothing to do"
            )
        if self.step >= t.train_steps:
            return (
                f"run is complete: step {self.step} of training.train_steps={t.train_steps}; "
                f"nothing to do (raise training.train_steps to train on)"
            )
        return None

    def run(self) -> dict:
        """Trains to `training.train_steps` (resuming if the run has checkpoints).

        A run that is already complete is left as it is.

        Returns:
            dict with the last step ("step"), the last evaluation results ("eval") and
            "complete": a message when there was nothing to do, else None.

        Raises:
            Preempted: SIGTERM arrived (a checkpoint at the current step was written).
            NonFiniteLoss: NaN/Inf loss under the `fail` policy or too many rollbacks.
        """
        cfg, t = self.cfg, self.cfg.training
        self._restore_or_init()
        done = self.completion()
        if done:
            if self.chief:
                log.info("%s: %s", cfg.run_dir, done)
            return {"step": self.step, "eval": {}, "complete": done}
        start_step = self.step
        journal = summaries.JsonlLog(cfg.run_dir, start_step, enabled=self.chief)
        board = summaries.Board(cfg.run_dir, enabled=self.chief)
        progress = summaries.Progress(t.train_steps, start_step, self.progress_enabled)
        if self.restored_from:
            progress.message(f"resumed from {self.restored_from} at step {start_step}")
        rate = matmul_rate()
        flops_fn = model_flops(self.model, cfg.model.type)
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        window = summaries.Window()
        last_eval: dict = {}
        profiling = False
        try:
            if self._eval_pending():
                # The evaluation at this step was interrupted by SIGTERM: run it first.
                last_eval = self._boundary(board, progress, evaluate=True, save=True)
            iterator = self._iterator()
            while self.step < t.train_steps:
                step = self.step
                if t.profile_steps and step + 1 == t.profile_steps[0]:
                    profiling = board.trace_on(os.path.join(cfg.run_dir, summaries.LOG_DIR))
                n = self._chunk(step)
                try:
                    taken, stats = self._run_chunk(iterator, step, n, window, journal)
                except tf.errors.ResourceExhaustedError as err:
                    raise OutOfMemory(self._out_of_memory(err)) from None
                if taken is not True:
                    iterator = self._non_finite(taken, journal, board, progress)
                    window = summaries.Window()
                    continue
                step = self.step
                if profiling and step >= t.profile_steps[1]:
                    board.trace_off()
                    profiling = False
                if step % t.log_every == 0 or step == t.train_steps:
                    metrics = window.metrics(flops_fn, rate)
                    metrics["learning_rate"] = float(stats["lr"][-1])
                    if t.mixed_precision == "float16":
                        metrics["loss_scale"] = float(stats["loss_scale"][-1])
                    board.scalars(step, metrics, "train")
                    shown = {"loss": metrics["loss"]}
                    if "tokens_per_second" in metrics:
                        shown["tok/s"] = round(metrics["tokens_per_second"])
                    progress.update(step, shown)
                    window = summaries.Window()
                evaluate = self._eval_point(step)
                save = step % t.checkpoint_every == 0 or step == t.train_steps
                if evaluate or save:
                    last_eval = self._boundary(board, progress, evaluate, save) or last_eval
                if self._sigterm:
                    self._save_once()
                    raise Preempted(
                        f"preempted by SIGTERM; checkpoint saved at step {step}; "
                        f"re-run the same command to resume"
                    )
        except _Stop as stop:
            last_eval = stop.results
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            if profiling:
                board.trace_off()
            journal.close()
            board.close()
        progress.message(f"done at step {self.step}")
        return {"step": self.step, "eval": last_eval, "complete": None}

    def _boundary(self, board, progress, evaluate: bool, save: bool) -> dict:
        """Evaluates (if due), then saves; stops the loop if early stopping says so.

        Raises:
            Preempted: SIGTERM during the evaluation (a checkpoint was saved first).
            _Stop: early stopping.
        """
        from kerastx.evaluate import EvaluationInterrupted

        results: dict = {}
        stop = False
        if evaluate:
            try:
                results = self._evaluate(board, progress)
            except EvaluationInterrupted:
                self._save_once()
                raise Preempted(
                    f"preempted by SIGTERM during the evaluation at step {self.step}; "
                    f"checkpoint saved at step {self.step} (the evaluation runs again "
                    f"on resume); re-run the same command to resume"
                ) from None
            except tf.errors.ResourceExhaustedError as err:
                self._save_once()  # the evaluation runs again on resume, as after SIGTERM
                raise OutOfMemory(
                    f"out of memory while evaluating on the dev set at step {self.step} "
                    f"(decoding.batch_size={self.cfg.decoding.batch_size} examples, "
                    f"decoding.max_length={self.cfg.decoding.max_length}); TensorFlow: "
                    f"{memory.tensorflow_detail(getattr(err, 'message', str(err)))}; lower "
                    f"decoding.batch_size and re-run to resume (checkpoint saved at step "
                    f"{self.step})"
                ) from None
            stop = self._should_stop() and self.step < self.cfg.training.train_steps
        if save or stop:
            self._save_once()
        if stop:
            progress.message(f"early stopping at step {self.step}")
            log.info(
                "early stopping at step %d: %s did not improve in %d evaluations",
                self.step,
                self.cfg.evaluation.best_metric,
                self.cfg.evaluation.early_stopping_patience,
            )
            raise _Stop(results)
        return results

    def _save_once(self) -> None:
        """Saves a checkpoint at the current step unless the newest one is at this step."""
        if self.checkpoints.saved_step != self.step:
            self.checkpoints.save()

    def _run_chunk(self, iterator, step: int, n: int, window, journal):
        """Runs the next `n` steps (the first one probed on the log grid) and logs them.

        Returns:
            `(taken, stats)`: True if every loss was finite (else the first bad step),
            and the statistics of the last call.
        """
        taken = True
        stats = None
        if window.steps == 0 and step % self.cfg.training.log_every == 0:
            # First step of a logging window: fetch its input eagerly to time it.
            # Only on the log_every grid: the probe is a separate graph whose float
            # results may differ from train_fn's in the last bit, so a run resumed off
            # the grid (SIGTERM) must not probe where the uninterrupted run did not
            # (that broke bit-exact resume).
            self._running = (step, 1, self._position())
            stats, waited, elapsed, traced = self.steps.probe(iterator)
            if not traced:
                window.waited += waited
                window.probed += elapsed
            taken = self._take(step, stats, elapsed, 1, not traced, window, journal)
            n -= 1
        if taken is True and n:
            self._running = (self.step, n, self._position())
            stats, elapsed, traced = self.steps.run(iterator, n)
            taken = self._take(self.step - n, stats, elapsed, n, not traced, window, journal)
        return taken, stats

    def _position(self) -> tuple[int, int]:
        """The data position: (epoch, index of the next batch to read)."""
        return int(self.state["data_epoch"].numpy()), int(self.state["data_index"].numpy())

    def _out_of_memory(self, err) -> str:
        """The one-line message of a step that ran out of memory (see `train.memory`).

        The failed call (`self._running`: first step, number of steps, data position)
        read the batches from that position on: with a data module that plans its
        batches (`planner`), their shapes are known, and the message names the largest
        and the step memory the estimate gives for it.
        """
        cfg = self.cfg
        step, n, position = self._running
        per_step = self.strategy.num_replicas_in_sync * cfg.training.gradient_accumulation
        batch = None
        planner = getattr(self.data, "planner", None)
        if planner is not None:
            try:
                batch = memory.largest_batch(
                    planner(self.strategy.num_replicas_in_sync), position, n * per_step
                )
            except Exception:  # noqa: BLE001 - the message must not fail; say less instead
                batch = None
        estimate = None
        if batch is not None:
            estimate = memory.estimate_step(
                self.model,
                memory.batch_shapes_of(*batch),
                self.optimizer,
                cfg.training.mixed_precision,
            )["total"]
        return memory.out_of_memory_message(
            (step + 1, step + n),
            batch,
            self.model.count_params(),
            estimate,
            cfg.data.batch_size,
            cfg.data.batch_unit,
            cfg.training.gradient_accumulation,
            getattr(err, "message", str(err)),
        )

    # -- events ------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._sigterm = True

    def _take(self, first_step, stats, seconds, steps, timed, window, journal):
        """Logs the steps of one call and adds them to the window, up to a bad loss.

        Returns:
            True if every loss was finite, else the first bad step.
        """
        bad_step = self._log_steps(first_step, stats, journal)
        if bad_step is True:
            window.add(stats, seconds, steps, timed)
        return bad_step

    @staticmethod
    def _log_steps(first_step: int, stats: dict, journal):
        """Writes the steps of one call up to the first non-finite loss.

        Returns:
            True if every loss was finite, else the first bad step.
        """
        records = summaries.step_records(first_step, stats)
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

        results = evaluate.evaluate_during_training(self, board, should_stop=lambda: self._sigterm)
        metric = self.cfg.evaluation.best_metric
        value = results.get(metric)
        better = False
        if value is not None:
            better = _is_better(metric, value, float(self.state["best_value"].numpy()))
            if better:
                self.state["best_value"].assign(_signed(metric, value))
                self.state["evals_since_best"].assign(0)
            else:
                self.state["evals_since_best"].assign_add(1)
        self.state["evaluated_step"].assign(self.step)
        if better:
            self.checkpoints.save(best=True)
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
