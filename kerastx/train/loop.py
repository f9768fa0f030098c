"""The training loop: owns the model, the optimizer, the data position and the checkpoints.

Resuming is exact: a checkpoint holds the model, the optimizer, the trainer's step, the
data position (epoch, next batch index), the dropout RNG state (Keras seed generators are
variables of the model), the loss scale and the early-stopping state. Re-running the same
command restores all of it, and the data stream continues at the first batch that was not
consumed, so every step runs exactly once.

Order at a step boundary: log, evaluate (best checkpoint, early-stopping count), then
save, so a checkpoint at an evaluation step already holds that evaluation's outcome.
SIGTERM (exit 75, `Preempted`) and Ctrl-C (SIGINT, exit 130, `Interrupted`) stop the
run at the end of the running call of steps with a checkpoint at that step; a second
Ctrl-C ends the process at once. A signal during an evaluation abandons it, saves, and
exits; the resumed run evaluates at that step first (`evaluated_step` records the last
finished evaluation). A run that is complete (`train_steps` reached, or stopped early)
does nothing when run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading

import tensorflow as tf

from kerastx import evaluate, metrics, runtime, sizing, tasks
from kerastx.config import ExperimentConfig, write_resolved
from kerastx.data import build_data
from kerastx.errors import KerastxError
from kerastx.models.build import build_model
from kerastx.train import memory, summaries, warm_start
from kerastx.train.checkpoints import Checkpoints, VariableBag, variable_manifest
from kerastx.train.flops import matmul_rate
from kerastx.train.optimizers import build_optimizer
from kerastx.train.schedules import WarmupSchedule
from kerastx.train.step import STREAM_KEYS, StepBuilder
from kerastx.train.strategy import is_chief, make_strategy
from kerastx.train.stream_input import StreamInput

log = logging.getLogger("kerastx")


class Preempted(KerastxError):
    """SIGTERM arrived; a checkpoint was written. The CLI exits with code 75."""

    exit_code = 75


class Interrupted(KerastxError):
    """Ctrl-C (SIGINT) arrived; a checkpoint was written. The CLI exits with code 130."""

    exit_code = 130


class OutOfMemory(KerastxError):
    """A training step (or an evaluation) ran out of memory: one line with what to change."""


class NonFiniteLoss(KerastxError):
    """The loss became NaN or Inf and the policy is `fail` (or rollbacks ran out)."""


class _Stop(Exception):
    """Internal: leave the training loop (early stopping) with the last eval results."""

    def __init__(self, results: dict):
        super().__init__("early stopping")
        self.results = results


@dataclasses.dataclass
class _Session:
    """What one `Trainer.run()` writes to and carries from step to step."""

    journal: summaries.JsonlLog
    board: summaries.Board
    progress: summaries.Progress
    flops_fn: object
    rate: float
    window: summaries.Window = dataclasses.field(default_factory=summaries.Window)
    last_eval: dict = dataclasses.field(default_factory=dict)
    profiling: bool = False


class Trainer:
    """Trains one experiment; see `run()`.

    Process-wide settings are scoped: the seed applies while the model and optimizer
    are created (their weights and dropout seeds), op determinism while `run()` trains,
    and the dtype policy to this model's layers only; each is restored afterwards
    (`kerastx.runtime`), so a second trainer in the same process starts as a fresh
    process would.

    Args:
        cfg: the resolved experiment.
        data: a `kerastx.data.DataModule` (built from `cfg` when None).
        strategy: a tf.distribute strategy (built from `cfg.distribution` when None).
        progress: bool. Show the progress line on stderr.
    """

    def __init__(self, cfg: ExperimentConfig, data=None, strategy=None, progress=True):
        self.cfg = cfg
        self.task = tasks.create(cfg)
        t = cfg.training
        self.strategy = strategy or make_strategy(cfg.distribution)
        self.chief = is_chief(self.strategy)
        if self.chief:
            write_resolved(cfg)
        self.data = data if data is not None else build_data(cfg)
        self.streamed = bool(getattr(self.data, "streamed", False))
        with runtime.seeded(cfg.seed), self.strategy.scope():
            self.model, self.optimizer = self._build_model_and_optimizer()
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
                    # Streamed corpora: the counts of the epoch being read (see
                    # _count_epochs); only then, so older checkpoints still match.
                    *(
                        (("data_counts", tf.zeros([len(STREAM_KEYS)], tf.int64)),)
                        + (("counts_epoch", tf.constant(0, tf.int64)),)
                        if self.streamed
                        else ()
                    ),
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
            self.task,
            self.schedule,
            t.label_smoothing,
            t.clip_norm,
            t.gradient_accumulation,
            t.mixed_precision == "float16",
            t.jit_compile,
            self.state,
            streamed=self.streamed,
        )
        self.stream_input = (
            StreamInput(self.data, self.strategy, cfg.run_dir) if self.streamed else None
        )
        self.progress_enabled = progress and self.chief
        self._stop_signal = None  # SIGTERM or SIGINT once one arrived: save and stop
        self._progress = None  # the progress line of the running session
        self._board = None  # the TensorBoard writer of the running session
        self.restored_from = None
        self._running = (0, 1, (0, 0))  # the step call in flight: (step, steps, position)

    def _build_model_and_optimizer(self):
        """The model and its built optimizer; a model too big for the machine is one line.

        On a machine without GPUs or TPUs the variables live in its memory: a model
        whose weights and optimizer state alone (the closed form of `kerastx.sizing`
        with the built vocabularies) exceed it is refused before TensorFlow tries (its
        allocator retries for seconds before it gives up, and an allocation the system
        overcommits can end in the kernel's out-of-memory killer instead).

        Raises:
            OutOfMemory: the model cannot fit, or TensorFlow or numpy could not allocate
                a variable: the line names the model's size and what to change.
        """
        t = self.cfg.training
        count = self._parameter_count()
        have = sizing.machine_memory()
        on_host = count is not None and have and _host_memory_holds_the_variables()
        if on_host and sizing.state_bytes(count, t.optimizer) > have:
            raise OutOfMemory(self._too_big(count, have, None))
        try:
            model = build_model(self.task, self.data, t.mixed_precision)
            optimizer = build_optimizer(t)
            optimizer.build(model.trainable_variables)
        except (tf.errors.ResourceExhaustedError, MemoryError) as err:
            raise OutOfMemory(self._too_big(count, have, err)) from None
        return model, optimizer

    def _parameter_count(self) -> int | None:
        """The model's parameters in closed form from the data's sizes (None: unknown)."""
        data = self.data
        target = getattr(data, "target_tokenizer", None)
        labels = getattr(data, "labels", None)
        sizes = sizing.Sizes(
            data.source_tokenizer.vocab_size,
            target.vocab_size if target is not None else None,
            len(labels) if labels is not None else None,
        )
        return type(self.task).parameter_count(self.cfg.model, sizes)

    def _too_big(self, count: int | None, have: int | None, err) -> str:
        """The line of a model whose variables do not fit; `err`: the failed allocation."""
        cfg = self.cfg
        if err is None:
            size = sizing.size_text(count, cfg.training.optimizer)
            parts = [
                f"the model does not fit this machine: {size}, more than its "
                f"{sizing.format_bytes(have)} before any gradient or activation"
            ]
        else:
            parts = ["out of memory while creating the model's variables"]
            if count is not None:
                parts.append(sizing.size_text(count, cfg.training.optimizer))
            if have:
                parts.append(f"this machine has {sizing.format_bytes(have)}")
            detail = memory.tensorflow_detail(getattr(err, "message", None) or str(err))
            if detail:
                source = "TensorFlow" if isinstance(err, tf.errors.OpError) else "numpy"
                parts.append(f"{source}: {detail}")
        parts.append(sizing.advice(cfg.model, sizing.layer_keys(self.task.model_keys)))
        return "; ".join(parts)

    # -- state -------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self.state["step"].numpy())

    def _restore_or_init(self) -> None:
        also = None
        if self.stream_input is not None:
            also = self.stream_input.restore  # the input's iterator state of that step
        self.restored_from = self.checkpoints.restore_latest(also=also)
        if self.restored_from is None and self.cfg.training.init_from:
            warm_start.init_from(self.model, self.optimizer, self.cfg.training)

    def _iterator(self):
        if self.stream_input is not None:
            # One host iterator for the run: its state is checkpointed (a rollback keeps
            # it, so the batches that led to a NaN are skipped, as below).
            return self.stream_input.iterator()
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
            Interrupted: Ctrl-C (SIGINT) arrived (the same).
            NonFiniteLoss: NaN/Inf loss under the `fail` policy or too many rollbacks.
            OutOfMemory: a step or the dev evaluation ran out of memory.
        """
        # Op determinism from the restore on: a streamed input's iterator is made (and
        # its state read) there, and TensorFlow builds a dataset's graph differently
        # under determinism, so a state saved inside it reads only inside it.
        with runtime.op_determinism(self.cfg.training.deterministic):
            self._restore_or_init()
            done = self.completion()
            if done:
                if self.chief:
                    log.info("%s: %s", self.cfg.run_dir, done)
                return {"step": self.step, "eval": {}, "complete": done}
            with self._session() as run:
                if self.restored_from:
                    run.progress.message(f"resumed from {self.restored_from} at step {self.step}")
                try:
                    self._train(run)
                except _Stop as stop:
                    run.last_eval = stop.results
        run.progress.message(f"done at step {self.step}")
        return {"step": self.step, "eval": run.last_eval, "complete": None}

    @contextlib.contextmanager
    def _session(self):
        """The writers, the SIGTERM and SIGINT handlers and the profiler of one `run()`,
        closed after."""
        cfg = self.cfg
        run = _Session(
            journal=summaries.JsonlLog(cfg.run_dir, self.step, enabled=self.chief),
            board=summaries.Board(cfg.run_dir, enabled=self.chief),
            progress=summaries.Progress(cfg.training.train_steps, self.step, self.progress_enabled),
            flops_fn=self.task.flops(self.model),
            rate=matmul_rate(),
        )
        old_handlers = {}
        if _main_thread():
            old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        self._progress = run.progress
        self._board = run.board
        try:
            yield run
        finally:
            self._progress = None
            self._board = None
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            if run.profiling:
                run.board.trace_off()
            run.journal.close()
            run.board.close()

    def _train(self, run: _Session) -> None:
        """The loop: a chunk of steps per call, then the log window, then the boundary."""
        t = self.cfg.training
        if self._eval_pending():
            # The evaluation at this step was interrupted by SIGTERM: run it first.
            run.last_eval = self._boundary(run.board, run.progress, evaluate_now=True, save=True)
        iterator = self._iterator()
        while self.step < t.train_steps:
            self._profile(run, starting=True)
            try:
                taken, stats = self._run_chunk(
                    iterator, self.step, self._chunk(self.step), run.window, run.journal
                )
            except tf.errors.ResourceExhaustedError as err:
                raise OutOfMemory(self._out_of_memory(err)) from None
            except tf.errors.InvalidArgumentError as err:
                problem = self.data.stream_error(err) if self.streamed else None
                if problem is None:
                    raise
                raise problem from None
            if taken is not True:
                iterator = self._non_finite(taken, run.journal, run.board, run.progress)
                run.window = summaries.Window()
                continue
            self._profile(run, starting=False)
            self._log_window(run, stats)
            self._step_boundary(run)

    def _profile(self, run: _Session, starting: bool) -> None:
        """Starts the profiler before `training.profile_steps[0]`, stops it after [1]."""
        first_last = self.cfg.training.profile_steps
        if not first_last:
            return
        if starting and self.step + 1 == first_last[0]:
            run.profiling = run.board.trace_on(os.path.join(self.cfg.run_dir, summaries.LOG_DIR))
        elif not starting and run.profiling and self.step >= first_last[1]:
            run.board.trace_off()
            run.profiling = False

    def _log_window(self, run: _Session, stats: dict) -> None:
        """At a `log_every` step (and the last): TensorBoard scalars and the progress line."""
        t, step = self.cfg.training, self.step
        if step % t.log_every and step != t.train_steps:
            return
        scalars = run.window.metrics(run.flops_fn, run.rate)
        scalars["learning_rate"] = float(stats["lr"][-1])
        if t.mixed_precision == "float16":
            scalars["loss_scale"] = float(stats["loss_scale"][-1])
        run.board.scalars(step, scalars, "train")
        shown = {"loss": scalars["loss"]}
        if "tokens_per_second" in scalars:
            shown["tok/s"] = round(scalars["tokens_per_second"])
        run.progress.update(step, shown)
        run.window = summaries.Window()

    def _step_boundary(self, run: _Session) -> None:
        """Evaluates and saves when due; on SIGTERM or SIGINT saves and stops.

        Raises:
            Preempted: SIGTERM arrived. Interrupted: Ctrl-C (SIGINT) arrived.
        """
        t, step = self.cfg.training, self.step
        evaluate_now = self._eval_point(step)
        save = step % t.checkpoint_every == 0 or step == t.train_steps
        if evaluate_now or save:
            run.last_eval = (
                self._boundary(run.board, run.progress, evaluate_now, save) or run.last_eval
            )
        if self._stop_signal is not None:
            self._save_once()
            raise self._stopped(f"checkpoint saved at step {step}")

    def _boundary(self, board, progress, evaluate_now: bool, save: bool) -> dict:
        """Evaluates (if due), then saves; stops the loop if early stopping says so.

        Raises:
            Preempted, Interrupted: SIGTERM or SIGINT during the evaluation (a
                checkpoint was saved first).
            _Stop: early stopping.
        """
        results: dict = {}
        stop = False
        if evaluate_now:
            try:
                results = self._evaluate(board, progress)
            except evaluate.EvaluationInterrupted:
                self._save_once()
                raise self._stopped(
                    f"checkpoint saved at step {self.step} (the evaluation runs again on resume)",
                    during=f" during the evaluation at step {self.step}",
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
        """Saves a checkpoint at the current step unless the newest one is at this step.

        With streamed corpora every worker first saves its input's iterator state of
        this step (a checkpoint without one is skipped on resume), then the states no
        kept checkpoint needs are deleted.
        """
        if self.checkpoints.saved_step != self.step:
            if self.stream_input is not None:
                self.stream_input.save(self.step)
            self.checkpoints.save()
            if self.stream_input is not None:
                self.stream_input.prune(self.checkpoints.kept_steps())

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
        if self._stop_signal is None:
            self._stop_signal = signal.SIGTERM

    def _on_sigint(self, signum, frame):
        """Ctrl-C: stop at the end of the running call with a checkpoint, as SIGTERM.

        A second Ctrl-C takes the default action (the process ends at once, without
        a checkpoint): the handler gives SIGINT back to the system.
        """
        del signum, frame
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self._stop_signal is None:
            self._stop_signal = signal.SIGINT
        if self._progress is not None:
            self._progress.message(
                "Ctrl-C: stopping after the running steps with a checkpoint "
                "(Ctrl-C again quits at once, without one)"
            )

    def _stopped(self, saved: str, during: str = "") -> KerastxError:
        """The error a stop signal ends the run with: `saved` says what was written."""
        if self._stop_signal == signal.SIGINT:
            return Interrupted(f"interrupted (Ctrl-C){during}; {saved}; re-run to resume")
        return Preempted(
            f"preempted by SIGTERM{during}; {saved}; re-run the same command to resume"
        )

    def _take(self, first_step, stats, seconds, steps, timed, window, journal):
        """Logs the steps of one call and adds them to the window, up to a bad loss.

        Returns:
            True if every loss was finite, else the first bad step.
        """
        bad_step = self._log_steps(first_step, stats, journal)
        if bad_step is True:
            window.add(stats, seconds, steps, timed)
            if self.streamed:
                self._count_epochs(first_step, stats)
        return bad_step

    def _count_epochs(self, first_step: int, stats: dict) -> None:
        """Adds the steps' streamed-input counts to their epoch's; reports an epoch once
        a step reads the next one (a step straddling two epochs counts in the later)."""
        counts = self.state["data_counts"]
        for i in range(len(stats["data_epoch"])):
            epoch = int(stats["data_epoch"][i])
            current = int(self.state["counts_epoch"].numpy())
            if epoch > current:
                self._report_epoch(current, counts.numpy(), first_step + i)
                counts.assign(tf.zeros_like(counts))
                self.state["counts_epoch"].assign(epoch)
            step = [round(float(stats[key][i])) for key in STREAM_KEYS]
            counts.assign_add(tf.constant(step, tf.int64))

    def _report_epoch(self, epoch: int, counts, step: int) -> None:
        values = dict(zip(("read", "dropped", "empty", "truncated", "replaced"), map(int, counts)))
        parts = [f"{values['read']} examples read"]
        for key, label in (
            ("dropped", "dropped as too long"),
            ("empty", "empty dropped"),
            ("truncated", "truncated"),
            ("replaced", "with invalid UTF-8 replaced"),
        ):
            if values[key]:
                parts.append(f"{values[key]} {label}")
        text = f"epoch {epoch} of the streamed training data ended: {', '.join(parts)}"
        if self.chief:
            log.info("%s", text)
            if self._board is not None:
                self._board.scalars(step, {f"data/{k}": v for k, v in values.items()}, "train")

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
        results = evaluate.evaluate_during_training(
            self, board, should_stop=lambda: self._stop_signal is not None
        )
        metric = self.cfg.evaluation.best_metric
        value = results.get(metric)
        better = False
        if value is not None:
            signed = metrics.signed(metric, value)  # lower is better
            better = signed < float(self.state["best_value"].numpy())
            if better:
                self.state["best_value"].assign(signed)
                self.state["evals_since_best"].assign(0)
            else:
                self.state["evals_since_best"].assign_add(1)
        self.state["evaluated_step"].assign(self.step)
        if better:
            self.checkpoints.save(best=True)
        shown = {k: round(v, 4) for k, v in results.items() if isinstance(v, float)}
        if shown:  # nothing to show without a dev set
            progress.message(f"step {self.step} eval: {shown}")
        return results

    def _should_stop(self) -> bool:
        patience = self.cfg.evaluation.early_stopping_patience
        return bool(patience) and int(self.state["evals_since_best"].numpy()) >= patience


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def _host_memory_holds_the_variables() -> bool:
    """Whether training runs on the CPU (no GPU or TPU device): variables in host memory."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
