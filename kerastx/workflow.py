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

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile

from kerastx import evaluate as evaluate_lib
from kerastx import export as export_lib
from kerastx import inference, predict, runs, tasks
from kerastx.config import (
    CONFIG_FILE,
    ConfigError,
    DecodingConfig,
    ExperimentConfig,
    Provenance,
    load_experiment,
    typed,
    validation,
    yamlio,
)
from kerastx.config.sections import STRATEGY_OPTIONS
from kerastx.data import build_data
from kerastx.errors import KerastxError
from kerastx.train.checkpoints import average_checkpoints
from kerastx.train.loop import Trainer

log = logging.getLogger("kerastx")


# -- train ---------------------------------------------------------------------------------


def train(cfg: ExperimentConfig, data=None, strategy=None) -> dict:
    """Trains (or resumes) an experiment, then averages, evaluates on test, exports.

    A run that is already complete (see `Trainer.completion`) is left untouched: the
    message says so and nothing else runs, unless the steps after training (averaging,
    test evaluation, export) were interrupted: `finished.json` records the step they
    last finished at, and without it they run again.

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
        if not trainer.chief:
            return result
        if result["complete"]:
            if _finished_step(cfg.run_dir) == trainer.step:
                return result
            # Trained to the end, but interrupted (Ctrl-C, SIGTERM, kill) before the
            # steps after training ended: they run now, so none is silently skipped.
            log.info(
                "%s: training is complete, but averaging / the test evaluation / the "
                "export did not finish; running them now",
                cfg.run_dir,
            )
        if cfg.training.average_last > 1:
            result["averaged"] = average_last(trainer)
        if cfg.data.test is not None:
            result["test"] = evaluate(cfg.run_dir)
        if cfg.export.enabled:
            result["export"] = export(cfg.run_dir)
            result["examples"] = show_exported_examples(cfg)
        _mark_finished(cfg.run_dir, trainer.step)
        return result


FINISHED_FILE = "finished.json"


def _finished_step(run_dir: str) -> int | None:
    """The step at which `train()` last finished every step after training, or None."""
    try:
        with open(os.path.join(run_dir, FINISHED_FILE), encoding="utf-8") as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mark_finished(run_dir: str, step: int) -> None:
    """Records (atomically) that averaging, the test evaluation and the export are done."""
    path = os.path.join(run_dir, FINISHED_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"step": step}, f)
    os.replace(path + ".tmp", path)


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
    wide = wide_average_warning(paths, trainer.step)
    if wide:
        log.warning("%s", wide)
    out = average_checkpoints(
        trainer.model,
        paths,
        os.path.join(trainer.cfg.run_dir, "checkpoints", "averaged"),
        trainer.step,
    )
    log.info("averaged the last %d checkpoints into %s", len(paths), out)
    return out


def wide_average_warning(paths: list[str], final_step: int) -> str | None:
    """A warning when the averaged checkpoints reach back before the last quarter of
    training, or None.

    Early weights pull the average far from the trained model: measured on
    translate_multilingual.yaml, averaging the checkpoints of steps 250-1000 of a
    1000-step run took the dev BLEU from 33.2 (last checkpoint) to 21.2.

    Args:
        paths: the averaged checkpoint paths (`.../ckpt-<step>`), oldest first.
        final_step: int. The step training ended at.
    """
    steps = [int(p.rsplit("-", 1)[1]) for p in paths]
    if not steps or steps[0] >= 0.75 * final_step:
        return None
    return (
        f"training.average_last={len(steps)} averages the checkpoints of steps "
        f"{steps[0]}-{steps[-1]}, from {100 * steps[0] / final_step:.0f}% of training on; "
        f"early weights pull the average away from the trained model: checkpoint more "
        f"often (a smaller training.checkpoint_every) or average fewer "
        f"(training.average_last), or compare with `kerastx evaluate --checkpoint last`"
    )


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

    Examples longer than `data.max_source_length` / `max_target_length` are cut for the
    model (the metrics use the whole references): counted in the results (`truncated`)
    and in one warning line, or refused under `decoding.long_inputs: error`.

    Args:
        run_dir: str. The run directory.
        split: str. "dev" or "test".
        overrides: list of str. `--set` overrides of resume-safe keys (decoding,
            `export.checkpoint`, ...).

    Returns:
        The results written to `RUN_DIR/eval_<split>.json`.
    """
    loaded = runs.load_run(run_dir, overrides)
    cfg = loaded.cfg
    if getattr(cfg.data, split) is None:
        raise KerastxError(f"{run_dir}: the experiment has no data.{split} corpus")
    truncated = _check_long_examples(cfg, loaded.data, split)
    settings = inference.settings_from_config(cfg.decoding)
    results = evaluate_lib.evaluate_model(
        loaded.task,
        loaded.model,
        loaded.data,
        split,
        settings,
        num_samples=cfg.evaluation.num_samples,
    )
    if cfg.model.num_experts:
        from kerastx import expert_load

        results["expert_load"] = expert_load.expert_load(
            loaded.task, loaded.model, loaded.data, split
        )
        print(f"expert load ({split}, share of token-expert assignments):")
        print(expert_load.table(results["expert_load"]))
    results["checkpoint"] = loaded.checkpoint
    results["split"] = split
    results["truncated"] = truncated
    results["decoding"] = settings
    path = os.path.join(run_dir, f"eval_{split}.json")
    shown = {k: round(v, 3) for k, v in results.items() if isinstance(v, float)}
    print(f"{split}: {shown}")
    for condition, group in results.get("by_condition", {}).items():
        shown = {k: round(v, 3) for k, v in group.items() if isinstance(v, float)}
        print(f"  condition {condition} ({group['decoded']} decoded): {shown}")
    for sample in results.get("samples", []):
        print(
            f"  {sample['source']} -> {sample['hypothesis']}   "
            f"(reference: {' / '.join(sample['references'])})"
        )
    with _writing(path, "the results (printed above)"), open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
    return results


@contextlib.contextmanager
def _writing(path: str, what: str):
    """An OS error while writing `what` to `path` (read-only, full or missing directory)
    becomes one line naming the path, not a traceback."""
    try:
        yield
    except OSError as err:
        where = err.filename or path
        raise KerastxError(
            f"{where}: cannot write {what} ({err.strerror or err}); make it writable or "
            f"choose another place"
        ) from None


def _check_long_examples(cfg: ExperimentConfig, data, split: str) -> int:
    """The number of examples of `split` cut to the length limits: one warning line, or an
    error under `decoding.long_inputs: error`."""
    counts = data.split_counts(split)
    cut, total = counts.get("truncated", 0), counts.get("examples", 0)
    if not cut:
        return 0
    limits = (
        f"data.max_source_length={cfg.data.max_source_length} or "
        f"data.max_target_length={cfg.data.max_target_length} tokens"
    )
    if cfg.decoding.long_inputs == "error":
        raise KerastxError(
            f"data.{split}: {cut} of {total} examples are longer than {limits} "
            f"(decoding.long_inputs: error); shorten them, or let them be cut with "
            f"--long-inputs truncate"
        )
    log.warning(
        "%d of %d %s examples were longer than %s and were cut to them for the model "
        "(the metrics use the whole references)",
        cut,
        total,
        split,
        limits,
    )
    return cut


def export(run_dir: str, output_dir: str | None = None, overrides: list[str] | None = None) -> str:
    """`kerastx export RUN_DIR`: writes RUN_DIR/export (or `output_dir`) after the
    parity check passed; returns the directory. `overrides`: resume-safe `--set` keys
    (`export.checkpoint=best`: the weights exported)."""
    output_dir = output_dir or os.path.join(run_dir, export_lib.EXPORT_DIR)
    parent = os.path.dirname(os.path.abspath(output_dir))
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
        raise KerastxError(
            f"{output_dir}: cannot write the export there: {parent} is not a writable "
            f"directory; choose another --output"
        )
    loaded = runs.load_run(run_dir, overrides)
    with _writing(output_dir, "the export"):
        return export_lib.export_run(
            loaded.task, loaded.model, loaded.data, loaded.checkpoint, output_dir
        )


# -- predict, score --------------------------------------------------------------------------


class OptionError(KerastxError):
    """Option values a verb refuses (CLI flags, Python keywords), one line per problem.

    Attributes:
        options: list of `(key, problem)`: the option (`beam_size`; the command line
            names it by its flag, `--beam-size`) or None, and what is wrong.
    """

    def __init__(self, options: list[tuple[str | None, str]]):
        self.options = list(options)
        super().__init__("\n".join(f"{k}: {p}" if k else p for k, p in self.options))


# A validator line about a located key: "<key>: decoding.<path key>: <problem>".
_LOCATED = re.compile(r"(\w+): decoding\.(\w+): (.*)")


def decoding_config(
    cfg: ExperimentConfig, overrides: dict | None, where: str, config_path: str | None = None
) -> DecodingConfig:
    """The `decoding:` section of `cfg` with `overrides` applied, checked by the config's
    own rules: each value by its field's type and bounds (`typed`), the chosen strategy
    reads it (`STRATEGY_OPTIONS`), and the cross-field rules (`validation`).

    Args:
        cfg: the run's (or the export's) resolved experiment.
        overrides: dict of decoding key -> value (CLI flags, Python keywords).
        where: str. The run or export directory (named in messages).
        config_path: str or None. The config file `cfg` was read from: the cross-field
            messages say where the other keys were set.

    Raises:
        OptionError: every problem, each naming its option.
    """
    overrides = dict(overrides or {})
    known = [f.name for f in dataclasses.fields(DecodingConfig)]
    problems: list[tuple[str | None, str]] = []
    values = {}
    for key, value in overrides.items():
        if key not in known:
            problems.append((key, f"not a decoding option (use: {', '.join(known)})"))
            continue
        try:
            values[key] = getattr(typed.from_data(DecodingConfig, {key: value}, {}), key)
        except ConfigError as err:
            problems += [(key, line.removeprefix(f"{key}: ")) for line in err.messages]
    if problems:
        raise OptionError(problems)
    dec = dataclasses.replace(cfg.decoding, **values)
    chosen = "the chosen strategy" if "strategy" in values else f"decoding.strategy of {where}"
    for key in values:
        readers = [name for name, keys in STRATEGY_OPTIONS.items() if key in keys]
        if readers and dec.strategy not in readers:
            problems.append(
                (
                    key,
                    f"not read by strategy '{dec.strategy}' ({chosen}); only by "
                    f"{' and '.join(readers)}: choose that strategy or leave the option out",
                )
            )
    if problems:
        raise OptionError(problems)
    # Locations: the config file's, but the decoding keys given here are named by their
    # key (mapped back below) and the file's other decoding keys are not named, so that
    # a broken rule is reported at an option given here.
    locations = {}
    if values and config_path:
        _, file_prov = load_experiment([config_path])
        locations = {p: v for p, v in file_prov.locations.items() if p[:1] != ("decoding",)}
    prov = Provenance(locations={**locations, **{("decoding", k): (k, 0) for k in values}})
    try:
        validation.validate(dataclasses.replace(cfg, decoding=dec), prov)
    except ConfigError as err:
        for line in err.messages:
            m = _LOCATED.fullmatch(line)
            if m and m[1] in values:
                about = "" if m[1] == m[2] else f"decoding.{m[2]} "
                problems.append((m[1], about + m[3]))
            else:
                problems.append((None, line))
        raise OptionError(problems) from None
    return dec


def _exported(path: str) -> bool:
    return os.path.exists(os.path.join(path, "saved_model.pb"))


def predict_lines(
    path: str,
    lines: list[str],
    decoding: dict | None = None,
    checkpoint: str | None = None,
    source: str | None = None,
) -> list[str]:
    """Decodes `lines` with a run directory or an exported SavedModel; input order kept.

    Inputs longer than the model takes are cut and counted (one warning line), or
    refused with `long_inputs="error"`; see `kerastx.predict`.

    Args:
        path: str. A run directory or an export directory.
        lines: list of str.
        decoding: dict. Overrides of the `decoding:` settings (CLI flags; keys of
            `DecodingConfig`: `strategy`, `beam_size`, ..., `batch_size`, `long_inputs`,
            `jit_compile` (run directories: decode with XLA, see `inference.Decoder`)),
            each checked as the config would check it (`decoding_config`).
        checkpoint: str or None. Run directories: `export.checkpoint` (auto, best,
            last, averaged), the weights decoded with; default: the run's setting.
        source: str or None. The file the lines come from (named in messages).

    Returns:
        The output lines (see `kerastx.predict`).

    Raises:
        OptionError: a decoding option the config's rules refuse, or one the chosen
            strategy does not read.
    """
    exported = _exported(path)
    if exported:
        if checkpoint is not None:
            raise OptionError(
                [
                    (
                        "checkpoint",
                        f"{path} is an export, which holds one set of weights; "
                        "give the run directory to choose a checkpoint",
                    )
                ]
            )
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the tokenizer ops

        cfg, _ = load_experiment([os.path.join(path, "assets", "config.yaml")])
        task = tasks.create(cfg)
        dec = decoding_config(cfg, decoding, path, os.path.join(path, "assets", "config.yaml"))
        _check_export_request(cfg, decoding or {}, dec, path)
        loaded = tf.saved_model.load(path)
        tokenize = loaded.source_tokenizer.tokenize
    else:
        overrides = [] if checkpoint is None else [f"export.checkpoint={checkpoint}"]
        cfg = runs.load_config(path, overrides)
        # Checked before the model is loaded.
        dec = decoding_config(cfg, decoding, path, os.path.join(path, CONFIG_FILE))
        run = runs.load_run(path, overrides)
        cfg, task = run.cfg, run.task
        tokenize = run.data.source_tokenizer.tokenize
    texts = lines
    if cfg.model.num_conditions or cfg.model.condition_dim:
        # `CONDITION<TAB>TEXT` lines, checked here so a message names the input file.
        if exported:
            _, texts = predict.export_conditions(loaded, lines, source)
        else:
            tags = predict.run_condition_tags(run.data)
            _, texts = predict.split_conditions(lines, cfg.model.condition_dim, tags, source)
    settings = inference.settings_from_config(dec)
    long = predict.long_lines(tokenize, texts, task.input_tokens_kept())
    predict.check_long_inputs(long, len(lines), cfg.data.max_source_length, dec.long_inputs, source)
    if exported:
        decoded = task.predict_exported(loaded, lines, settings, dec.batch_size)
    else:
        decoded = task.predict(
            run.model, run.data, lines, settings, dec.batch_size, dec.jit_compile
        )
    return predict.format_outputs(decoded, task.outputs_per_input(settings))


def _check_export_request(cfg: ExperimentConfig, decoding: dict, dec, path: str) -> None:
    """What an exported model cannot do that its config allows: decode longer than the
    cache it was exported with (`decoding.max_length` of the export)."""
    if "max_length" in decoding and dec.max_length > cfg.decoding.max_length:
        raise OptionError(
            [
                (
                    "max_length",
                    f"must be <= {cfg.decoding.max_length} for {path} (its "
                    f"decoding.max_length, the size of its cache); got {dec.max_length}",
                )
            ]
        )


def predict_file(
    path: str,
    input_path: str | None = None,
    output_path: str | None = None,
    decoding: dict | None = None,
    checkpoint: str | None = None,
) -> int:
    """`kerastx predict PATH`: decodes a file (or stdin: the same UTF-8 rules) line by
    line; one output line per input line (n-best: `n_best` lines)."""
    if not os.path.isdir(path):
        raise KerastxError(f"{path}: no such run or export directory")
    lines = predict.read_lines(input_path)
    name = input_path or "<stdin>"
    predict.write_lines(output_path, predict_lines(path, lines, decoding, checkpoint, name))
    return 0


def score(
    path: str,
    source: str,
    target: str,
    output_path: str | None = None,
    overrides: list[str] | None = None,
) -> int:
    """`kerastx score RUN_DIR`: log-probability of each target given its source.

    seq2seq: `log p(target | source)`; decoder_lm: `log p(target | source)` with the
    source line as the prompt (an empty source line scores the target alone). Writes one
    line per pair: the summed log-probability (natural log, EOS included) and the number
    of scored target tokens, tab-separated. Sources longer than the model takes are cut
    as `predict` cuts them (counted: one warning line; refused under
    `decoding.long_inputs: error`).

    Args:
        overrides: list of str. Resume-safe `--set` keys (`export.checkpoint=best`,
            `decoding.long_inputs=error`).
    """
    sources, targets = predict.read_lines(source), predict.read_lines(target)
    if len(sources) != len(targets):
        raise KerastxError(f"{source} has {len(sources)} lines but {target} has {len(targets)}")
    run = runs.load_run(path, overrides)
    cfg = run.cfg
    long = predict.long_lines(
        run.data.source_tokenizer.tokenize, sources, run.task.input_tokens_kept()
    )
    predict.check_long_inputs(
        long, len(sources), cfg.data.max_source_length, cfg.decoding.long_inputs, source, "sources"
    )
    try:
        lines = run.task.score(run.model, run.data, sources, targets)
    except predict.TooLongToScore as err:
        raise err.named(target) from None
    predict.write_lines(output_path, lines)
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

    def evaluate(self, split: str = "test", checkpoint: str | None = None, **decoding) -> dict:
        """Metrics of the trained run on a split (decoding settings as keywords;
        `checkpoint`: `export.checkpoint`, the weights evaluated)."""
        sets = [f"decoding.{k}={_value_text(v)}" for k, v in decoding.items()]
        if checkpoint is not None:
            sets.append(f"export.checkpoint={checkpoint}")
        return evaluate(self.run_dir, split, sets)

    def export(self, output_dir: str | None = None, checkpoint: str | None = None) -> str:
        """Writes the SavedModel (parity-checked); returns its directory."""
        sets = [] if checkpoint is None else [f"export.checkpoint={checkpoint}"]
        return export(self.run_dir, output_dir, sets)

    def predict(self, texts: list[str], checkpoint: str | None = None, **decoding) -> list[str]:
        """Outputs of raw texts with the trained run (decoding overrides as keywords,
        checked as `kerastx predict` checks its flags)."""
        return predict_lines(self.run_dir, list(texts), decoding, checkpoint)
