"""The workflow: train -> average -> evaluate -> export, and the Python API over it.

Every verb of the command line is one function here (`kerastx.cli` parses arguments and
calls it); each opens what it needs (a config, a run directory, an export) and calls
the library modules with the run's task. The library modules never import this one or
the CLI.

From Python (a notebook, a script, a sweep)::

    import kerastx

    exp = kerastx.Experiment.from_yaml("experiments/quickstart.yaml",
                                       run_dir="runs/nb", training__train_steps=200)
    exp.train()                      # {"step": 200, "eval": {...}, "test": {...}, ...}
    exp.evaluate("dev")              # {"loss": ..., "wer": ..., ...}
    exp.predict(["hello", "world"])  # ["HH AH0 L OW1", ...]
    exp.export()                     # "runs/nb/export"

Overrides are keyword paths (`model__d_model=256` is `--set model.d_model=256`) or a
list of `KEY=VALUE` strings.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from kerastx import evaluate as evaluate_lib
from kerastx import export as export_lib
from kerastx import inference, predict, runs, tasks
from kerastx.config import ExperimentConfig, load_experiment, yamlio
from kerastx.data import build_data
from kerastx.errors import KerastxError
from kerastx.train.checkpoints import average_checkpoints
from kerastx.train.loop import Trainer

log = logging.getLogger("kerastx")


# -- train ---------------------------------------------------------------------------------


def train(cfg: ExperimentConfig, data=None, strategy=None) -> dict:
    """Trains (or resumes) an experiment, then averages, evaluates on test, exports.

    A run that is already complete (see `Trainer.completion`) is left untouched: the
    message says so and nothing else runs.

    Args:
        cfg: the resolved experiment.
        data: a DataModule, or None to build it from `cfg` (tests pass a fake one).
        strategy: a tf.distribute strategy, or None for `cfg.distribution`'s.

    Returns:
        dict: "step", "eval" (the last dev evaluation), "complete" (the message of a
        run with nothing to do, else None), and when they ran "averaged" (checkpoint),
        "test" (metrics), "export" (directory) and "examples" (what the export says).
        Errors raise (SIGTERM: `Preempted`, exit code 75).

    The chief first checks the run directory (`config.rundir.check_run_dir`: new, empty
    or a kerastx run, and writable), then holds its lock (`train.run_lock`) through
    training, averaging, the test evaluation and the export: a second training of the
    same directory is refused with one line naming the holder.
    """
    from kerastx.config.rundir import check_run_dir
    from kerastx.train import run_lock
    from kerastx.train.strategy import is_chief, make_strategy

    strategy = strategy or make_strategy(cfg.distribution)
    chief = is_chief(strategy)
    if chief:
        check_run_dir(cfg.run_dir)  # before the lock file is the first thing written
    with run_lock.hold(cfg.run_dir, enabled=chief):
        trainer = Trainer(cfg, data=data, strategy=strategy)
        result = trainer.run()
        if result["complete"] or not trainer.chief:
            return result
        if cfg.training.average_last > 1:
            result["averaged"] = average_last(trainer)
        if cfg.data.test is not None:
            result["test"] = evaluate(cfg.run_dir)
        if cfg.export.enabled:
            result["export"] = export(cfg.run_dir)
            result["examples"] = show_exported_examples(cfg)
        return result


def average_last(trainer) -> str:
    """Averages the model weights of the run's last `training.average_last` checkpoints.

    Writes `checkpoints/averaged/ckpt-<step>` (which `kerastx evaluate`, `predict` and
    `export` then load) and leaves the trainer's model holding the averaged weights.

    Returns:
        The path of the averaged checkpoint.
    """
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


def show_exported_examples(cfg: ExperimentConfig, count: int = 5) -> list[str]:
    """Prints what the exported SavedModel makes of `export.examples` (or test inputs).

    This runs the SavedModel itself (raw text in, text out), not the framework's
    decoder, so the last thing `make train` shows is what a user of the export gets.
    """
    inputs = list(cfg.export.examples)
    if not inputs:
        split = "test" if cfg.data.test is not None else "dev"
        if getattr(cfg.data, split) is None:
            return []
        inputs = list(build_data(cfg).references(split))[:count]
    path = os.path.join(cfg.run_dir, export_lib.EXPORT_DIR)
    outputs = predict_lines(path, inputs)
    print(f"the exported model ({path}) says:")
    for text, output in zip(inputs, outputs):
        print(f"  {text} -> {output}")
    return outputs


# -- evaluate, export ------------------------------------------------------------------------


def evaluate(run_dir: str, split: str = "test", overrides: list[str] | None = None) -> dict:
    """`kerastx evaluate RUN_DIR`: metrics on a split, printed and written as JSON.

    Returns:
        The results written to `RUN_DIR/eval_<split>.json`.
    """
    loaded = runs.load_run(run_dir, overrides)
    cfg = loaded.cfg
    if getattr(cfg.data, split) is None:
        raise KerastxError(f"{run_dir}: the experiment has no data.{split} corpus")
    settings = inference.settings_from_config(cfg.decoding)
    results = evaluate_lib.evaluate_model(
        loaded.task,
        loaded.model,
        loaded.data,
        split,
        settings,
        num_samples=cfg.evaluation.num_samples,
    )
    results["checkpoint"] = loaded.checkpoint
    results["split"] = split
    results["decoding"] = settings
    path = os.path.join(run_dir, f"eval_{split}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    shown = {k: round(v, 3) for k, v in results.items() if isinstance(v, float)}
    print(f"{split}: {shown}")
    for sample in results.get("samples", []):
        print(
            f"  {sample['source']} -> {sample['hypothesis']}   "
            f"(reference: {' / '.join(sample['references'])})"
        )
    print(f"wrote {path}")
    return results


def export(run_dir: str, output_dir: str | None = None) -> str:
    """`kerastx export RUN_DIR`: writes RUN_DIR/export (or `output_dir`) after the
    parity check passed; returns the directory."""
    loaded = runs.load_run(run_dir)
    output_dir = output_dir or os.path.join(run_dir, export_lib.EXPORT_DIR)
    return export_lib.export_run(
        loaded.task, loaded.model, loaded.data, loaded.checkpoint, output_dir
    )


# -- predict, score --------------------------------------------------------------------------


def predict_lines(path: str, lines: list[str], decoding: dict | None = None) -> list[str]:
    """Decodes `lines` with a run directory or an exported SavedModel; input order kept.

    Args:
        path: str. A run directory or an export directory.
        lines: list of str.
        decoding: dict. Overrides of the `decoding:` settings (CLI flags), `batch_size`,
            and `jit_compile` (run directories: decode with XLA, see
            `inference.Decoder`; default: `decoding.jit_compile` of the config).

    Returns:
        The output lines (see `kerastx.predict`).
    """
    decoding = dict(decoding or {})
    batch_size = decoding.pop("batch_size", None)
    jit_compile = decoding.pop("jit_compile", None)
    exported = os.path.exists(os.path.join(path, "saved_model.pb"))
    if exported:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the tokenizer ops

        cfg, _ = load_experiment([os.path.join(path, "assets", "config.yaml")])
        task = tasks.create(cfg)
    else:
        run = runs.load_run(path)
        cfg, task = run.cfg, run.task
    if cfg.model.num_conditions or cfg.model.condition_dim:
        raise KerastxError("predict: models with a condition are not supported yet")
    settings = inference.settings_from_config(cfg.decoding, **decoding)
    batch_size = batch_size or cfg.decoding.batch_size
    if exported:
        decoded = task.predict_exported(tf.saved_model.load(path), lines, settings, batch_size)
    else:
        jit = cfg.decoding.jit_compile if jit_compile is None else bool(jit_compile)
        decoded = task.predict(run.model, run.data, lines, settings, batch_size, jit)
    return predict.format_outputs(decoded, task.outputs_per_input(settings))


def predict_file(
    path: str,
    input_path: str | None = None,
    output_path: str | None = None,
    decoding: dict | None = None,
) -> int:
    """`kerastx predict PATH`: decodes a file (or stdin) line by line."""
    if not os.path.isdir(path):
        raise KerastxError(f"{path}: no such run or export directory")
    lines = predict.read_lines(input_path)
    predict.write_lines(output_path, predict_lines(path, lines, decoding))
    return 0


def score(path: str, source: str, target: str, output_path: str | None = None) -> int:
    """`kerastx score RUN_DIR`: log-probability of each target given its source.

    seq2seq: `log p(target | source)`; decoder_lm: `log p(target | source)` with the
    source line as the prompt (an empty source line scores the target alone). Writes one
    line per pair: the summed log-probability (natural log, EOS included) and the number
    of scored target tokens, tab-separated.
    """
    sources, targets = predict.read_lines(source), predict.read_lines(target)
    if len(sources) != len(targets):
        raise KerastxError(f"{source} has {len(sources)} lines but {target} has {len(targets)}")
    run = runs.load_run(path)
    predict.write_lines(output_path, run.task.score(run.model, run.data, sources, targets))
    return 0


# -- the Python API ------------------------------------------------------------------------


def _value_text(value) -> str:
    """A Python value as `--set` text: strings as written, the rest as JSON (YAML 1.2)."""
    return value if isinstance(value, str) else json.dumps(value)


def _override_list(overrides=None, keywords: dict | None = None) -> list[str]:
    """`["a.b=1"]` and `{"a__b": 1}` -> `--set` strings."""
    out = list(overrides or [])
    for key, value in (keywords or {}).items():
        out.append(f"{key.replace('__', '.')}={_value_text(value)}")
    return out


class Experiment:
    """One experiment, from a YAML file, a dict or a config; see the module docstring.

    Every method returns plain Python values (dicts of floats, lists of str, paths).
    """

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    @classmethod
    def from_yaml(cls, *paths: str, overrides=None, **keywords) -> Experiment:
        """An experiment from YAML files (merged left to right) and overrides."""
        cfg, _ = load_experiment(list(paths), _override_list(overrides, keywords))
        return cls(cfg)

    @classmethod
    def from_dict(cls, data: dict, overrides=None, **keywords) -> Experiment:
        """An experiment from a dict shaped like the YAML file, checked the same way
        (error messages name `<name>.yaml`, the file it is written to first)."""
        name = str(data.get("name") or "experiment")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(yamlio.dumps(data))
            return cls.from_yaml(path, overrides=overrides, **keywords)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Experiment:
        """An experiment from an `ExperimentConfig` (dataclass) built in Python."""
        return cls(cfg)

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    def train(self) -> dict:
        """Trains (resumes), averages, evaluates and exports as configured; see `train`."""
        return train(self.cfg)

    def evaluate(self, split: str = "test", **decoding) -> dict:
        """Metrics of the trained run on a split (decoding settings as keywords)."""
        sets = [f"decoding.{k}={_value_text(v)}" for k, v in decoding.items()]
        return evaluate(self.run_dir, split, sets)

    def export(self, output_dir: str | None = None) -> str:
        """Writes the SavedModel (parity-checked); returns its directory."""
        return export(self.run_dir, output_dir)

    def predict(self, texts: list[str], **decoding) -> list[str]:
        """Outputs of raw texts with the trained run (decoding overrides as keywords)."""
        return predict_lines(self.run_dir, list(texts), decoding)
