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


def run(cfg: ExperimentConfig, prov=None) -> int:
    """Trains (or resumes) an experiment, then evaluates on the test split and exports.

    Args:
        cfg: the resolved experiment.
        prov: its provenance (unused here; kept for the CLI's uniform call).

    Returns:
        0 on success (errors raise; SIGTERM raises `Preempted`, exit code 75).
    """
    del prov
    from kerastx.train.checkpoints import average_checkpoints
    from kerastx.train.loop import Trainer

    _configure_logging()
    trainer = Trainer(cfg)
    trainer.run()
    if not trainer.chief:
        return 0
    if cfg.training.average_last > 1:
        paths = trainer.checkpoints.manager.checkpoints[-cfg.training.average_last :]
        out = average_checkpoints(
            trainer.model,
            list(paths),
            os.path.join(cfg.run_dir, "checkpoints", "averaged"),
            trainer.step,
        )
        print(f"averaged the last {len(paths)} checkpoints into {out}")
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
    return 0
