"""Training: `run(cfg)` is what `kerastx train` and `make train` call.

Modules: strategy (tf.distribute from `distribution:`), step (the compiled step), loop
(the Trainer: checkpoints, resume, NaN policy, SIGTERM, evaluation), checkpoints,
losses, schedules, optimizers, summaries, flops, builders, launch (local multi-worker).
"""

from __future__ import annotations

import logging
import os

from kerastx.config import ExperimentConfig

log = logging.getLogger("kerastx")


def _configure_logging() -> None:
    """kerastx's own messages at INFO on stderr; other libraries stay at WARNING."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run(cfg: ExperimentConfig, prov=None, data=None, strategy=None) -> int:
    """Trains (or resumes) an experiment, then averages, evaluates on the test split, exports.

    A run that is already complete (see `Trainer.completion`) is left untouched: the
    message says so and nothing else runs.

    Args:
        cfg: the resolved experiment.
        prov: its provenance (unused here; kept for the CLI's uniform call).
        data: a DataModule, or None to build it from `cfg` (tests pass a fake one).
        strategy: a tf.distribute strategy, or None for `cfg.distribution`'s.

    Returns:
        0 on success (errors raise; SIGTERM raises `Preempted`, exit code 75).
    """
    del prov
    from kerastx.train.loop import Trainer

    _configure_logging()
    trainer = Trainer(cfg, data=data, strategy=strategy)
    result = trainer.run()
    if result["complete"] or not trainer.chief:
        return 0
    if cfg.training.average_last > 1:
        average_last(trainer)
    if cfg.data.test is not None:
        from kerastx import evaluate

        evaluate.run(cfg.run_dir)
    if cfg.export.enabled:
        from kerastx.cli import NotImplementedYet, _call

        try:
            export = _call("export")
        except NotImplementedYet:
            print("export: not implemented yet (issue 6)")
        else:
            export(cfg.run_dir)
            show_exported_examples(cfg)
    return 0


def show_exported_examples(cfg: ExperimentConfig, count: int = 5) -> list[str]:
    """Prints what the exported SavedModel makes of `export.examples` (or test inputs).

    This runs the SavedModel itself (raw text in, text out), not the framework's
    decoder, so the last thing `make train` shows is what a user of the export gets.
    """
    from kerastx.export import EXPORT_DIR
    from kerastx.predict import predict_lines

    inputs = list(cfg.export.examples)
    if not inputs:
        from kerastx.data import build_data

        split = "test" if cfg.data.test is not None else "dev"
        if getattr(cfg.data, split) is None:
            return []
        inputs = list(build_data(cfg).references(split))[:count]
    outputs = predict_lines(os.path.join(cfg.run_dir, EXPORT_DIR), inputs)
    print(f"the exported model ({os.path.join(cfg.run_dir, EXPORT_DIR)}) says:")
    for text, output in zip(inputs, outputs):
        print(f"  {text} -> {output}")
    return outputs


def average_last(trainer) -> str:
    """Averages the model weights of the run's last `training.average_last` checkpoints.

    Writes `checkpoints/averaged/ckpt-<step>` (which `kerastx evaluate`, `predict` and
    `export` then load) and leaves the trainer's model holding the averaged weights.

    Returns:
        The path of the averaged checkpoint.
    """
    from kerastx.train.checkpoints import average_checkpoints

    wanted = trainer.cfg.training.average_last
    paths = list(trainer.checkpoints.manager.checkpoints[-wanted:])
    if len(paths) < wanted:
        log.warning(
            "training.average_last=%d but only %d checkpoints are kept "
            "(training.keep_checkpoints=%d); averaging those",
            wanted,
            len(paths),
            trainer.cfg.training.keep_checkpoints,
        )
    out = average_checkpoints(
        trainer.model,
        paths,
        os.path.join(trainer.cfg.run_dir, "checkpoints", "averaged"),
        trainer.step,
    )
    log.info("averaged the last %d checkpoints into %s", len(paths), out)
    return out
