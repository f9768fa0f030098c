"""The `kerastx` command line: parses arguments and calls one library function per verb.

No logic lives here. Exit codes: 0 success; 2 a problem with the user's input (bad
config, bad data, unknown run, a flag value out of range), printed as one line per
problem without a traceback; 1 an internal error (a bug: the traceback is shown); 75
training was preempted by SIGTERM after saving a checkpoint (re-run the same command to
resume); 130 interrupted by Ctrl-C (training saves a checkpoint first; a second Ctrl-C
quits at once).

Console: kerastx's warnings print as `kerastx VERB: warning: ...`. TensorFlow's C++
start-up lines (oneDNN and CUDA probing on a CPU machine: `failed call to cuInit`, ...)
are hidden unless `-v/--verbose` is given or `TF_CPP_MIN_LOG_LEVEL` was set by the user
(see `_quiet_tensorflow`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile

import kerastx
from kerastx.errors import KerastxError

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75


class _StderrHandler(logging.StreamHandler):
    """Writes to the `sys.stderr` of the moment, not the one at setup (pytest's capture
    and notebooks replace it; a handler holding a closed stream loses messages)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


class _Formatter(logging.Formatter):
    """The message as is; kerastx's warnings as `kerastx VERB: warning: MESSAGE`."""

    def __init__(self, verb: str | None = None):
        super().__init__("%(message)s")
        self.verb = verb

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        kerastx_logger = record.name == "kerastx" or record.name.startswith("kerastx.")
        if self.verb and kerastx_logger and record.levelno >= logging.WARNING:
            return f"kerastx {self.verb}: warning: {text}"
        return text


def configure_logging(verb: str | None = None, verbose: bool = False) -> None:
    """kerastx's messages at INFO on stderr, one line each, for the command line only.

    The handler goes on the root logger, as `logging.basicConfig` would put it: the
    `kerastx` logger keeps propagating (a notebook or an application configures logging
    its own way), and a library that calls `basicConfig` later (absl does, on its first
    message) finds a handler and adds none, so no message is printed twice.

    Args:
        verb: str or None. Named in warnings (`kerastx predict: warning: ...`).
        verbose: bool. Keep absl's Python warnings (hidden otherwise).
    """
    root = logging.getLogger()
    handlers = [h for h in root.handlers if getattr(h, "kerastx_cli", False)]
    if not handlers:
        handler = _StderrHandler()
        handler.kerastx_cli = True
        root.addHandler(handler)
        handlers = [handler]
    for handler in handlers:
        handler.setFormatter(_Formatter(verb))
    logging.getLogger("kerastx").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.NOTSET if verbose else logging.ERROR)


# TensorFlow's native start-up lines: absl's notice, then `I`/`W` log lines
# (`I0000 00:00:1796.. 123 port.cc:153] oneDNN custom operations are on...`), and the
# continuation line of the CPU feature notice.
_NATIVE_NOISE = re.compile(
    rb"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] "
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)


def _quiet_tensorflow(verbose: bool) -> None:
    """Before TensorFlow is imported: its C++ logging at FATAL only (the CUDA probing of a
    CPU machine logs `failed call to cuInit` as an error), unless `verbose` or the user
    set `TF_CPP_MIN_LOG_LEVEL` (the level `import kerastx` defaults to 2 is then raised
    to 3). Must run before TensorFlow is imported to have an effect."""
    if kerastx.TF_LOG_LEVEL_SET_BY_USER or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"


def _import_tensorflow(verbose: bool) -> None:
    """Imports TensorFlow with the native lines it prints on the way (absl writes them to
    file descriptor 2 before its logging is set up, whatever `TF_CPP_MIN_LOG_LEVEL`
    says) caught; every other line is printed afterwards. Verbose, or with the user's
    own `TF_CPP_MIN_LOG_LEVEL`, or imported already: a plain import."""
    if verbose or kerastx.TF_LOG_LEVEL_SET_BY_USER or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                caught.seek(0)
                kept = [ln for ln in caught.read().splitlines(True) if not _NATIVE_NOISE.match(ln)]
                if kept:
                    os.write(2, b"".join(kept))
    finally:
        os.close(saved)


_VERBOSE = False  # -v/--verbose of the running command (set by `main`)


def _workflow():
    """`kerastx.workflow`, imported when a verb needs it (so `validate` and `schema`
    never import TensorFlow). A failing import is a bug: its traceback shows (exit 1)."""
    _import_tensorflow(_VERBOSE)
    from kerastx import workflow

    return workflow


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="+", help="experiment YAML file(s), merged left to right")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set model.num_layers=4 (repeatable)",
    )


# The decoding flags of `predict`: `--beam-size` sets `decoding.beam_size`, and so on. The
# values are checked by the config's own rules (`workflow.decoding_config`); a problem
# comes back as an `OptionError` naming the key, which `main` names by its flag.
DECODING_FLAGS = (
    ("strategy", str, ("greedy", "beam", "sample")),
    ("beam_size", int, None),
    ("n_best", int, None),
    ("length_penalty", float, None),
    ("temperature", float, None),
    ("top_k", int, None),
    ("top_p", float, None),
    ("seed", int, None),
    ("max_length", int, None),
    ("batch_size", int, None),
    ("long_inputs", str, ("truncate", "error")),
)
CHECKPOINTS = ("auto", "best", "last", "averaged")


def flag(key: str) -> str:
    """The command-line flag of an option key: `beam_size` -> `--beam-size`."""
    return "--" + key.replace("_", "-")


def _decoding_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (defaults: the run's decoding: section)")
    for key, kind, choices in DECODING_FLAGS:
        g.add_argument(flag(key), dest=key, type=kind, choices=choices, help=_doc("decoding", key))


def _doc(section: str, key: str) -> str:
    """The one-line doc of a config key (its `option(doc=...)`), for --help."""
    from kerastx.config import ExperimentConfig, typed

    field, _ = typed.lookup_field(ExperimentConfig, (section, key))
    return field.metadata["doc"].replace("%", "%%")


def _long_inputs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--long-inputs", choices=("truncate", "error"), help=_doc("decoding", "long_inputs")
    )


def _checkpoint_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--checkpoint", choices=CHECKPOINTS, help=_doc("export", "checkpoint") + note)


def _run_overrides(args) -> list[str]:
    """`--checkpoint` and `--long-inputs` as the `--set` overrides they stand for."""
    out = []
    if getattr(args, "checkpoint", None):
        out.append(f"export.checkpoint={args.checkpoint}")
    if getattr(args, "long_inputs", None):
        out.append(f"decoding.long_inputs={args.long_inputs}")
    return out


def _cmd_validate(args: argparse.Namespace) -> int:
    from kerastx.config.commands import validate

    mode = "explain" if args.explain else "diff" if args.diff else "resolved"
    print(validate(args.experiment, args.overrides, mode))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from kerastx.config.commands import schema

    text = schema()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _load(args: argparse.Namespace):
    from kerastx.config import load_experiment

    return load_experiment(args.experiment, args.overrides)


def _cmd_train(args):
    cfg, _ = _load(args)
    _workflow().train(cfg)
    return 0


def _cmd_vocab(args):
    _import_tensorflow(_VERBOSE)
    from kerastx.data import run_vocab

    cfg, _ = _load(args)
    return run_vocab(cfg)


def _cmd_prepare(args):
    _import_tensorflow(_VERBOSE)
    from kerastx.data.prepare import run_prepare

    cfg, _ = _load(args)
    return run_prepare(cfg)


def _cmd_data_stats(args):
    _import_tensorflow(_VERBOSE)
    from kerastx.data import run_data_stats

    cfg, _ = _load(args)
    return run_data_stats(cfg)


def _cmd_evaluate(args):
    _workflow().evaluate(
        args.run, split=args.split, overrides=args.overrides + _run_overrides(args)
    )
    return 0


def _cmd_predict(args):
    return _workflow().predict_file(
        args.run,
        input_path=args.input,
        output_path=args.output,
        decoding=_decoding_overrides(args),
        checkpoint=args.checkpoint,
    )


def _cmd_score(args):
    return _workflow().score(
        args.run,
        source=args.source,
        target=args.target,
        output_path=args.output,
        overrides=_run_overrides(args),
    )


def _cmd_export(args):
    _workflow().export(args.run, output_dir=args.output, overrides=_run_overrides(args))
    return 0


def _cmd_attention(args):
    _import_tensorflow(_VERBOSE)
    from kerastx import attention

    result = attention.run(
        args.run,
        args.input,
        args.output,
        layer=args.layer,
        head=args.head,
        target=args.target,
        checkpoint=args.checkpoint,
    )
    print(f"wrote {args.output} ({len(result['panels'])} panel(s))")
    return 0


def _cmd_curves(args):
    _import_tensorflow(_VERBOSE)
    from kerastx import curves

    curves.run(args.runs, args.output, metric=args.metric, x=args.x, references=args.reference)
    print(f"wrote {args.output}")
    return 0


def _cmd_launch(args):
    from kerastx.train import launch

    return launch.run(args.experiment, args.overrides, workers=args.workers)


def _cmd_data_service(args):
    _import_tensorflow(_VERBOSE)
    from kerastx.data import service

    return service.run(
        args.worker,
        args.port,
        host=args.host,
        workers=args.workers,
        worker_port_base=args.worker_port_base,
        dispatcher=args.dispatcher,
        verbose=_VERBOSE,
    )


def _cmd_bench(args):
    _import_tensorflow(_VERBOSE)
    from kerastx import bench

    return bench.run(quick=args.quick, output=args.output, only=args.only)


def _decoding_overrides(args) -> dict:
    keys = [key for key, _, _ in DECODING_FLAGS]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerastx",
        description="Train, evaluate, decode and export Transformer models from YAML experiments.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("train", help="train (or resume) an experiment")
    _experiment_args(p)
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("launch", help="train with N local worker processes (multi-worker)")
    _experiment_args(p)
    p.add_argument("--workers", type=int, default=2, help="worker processes on this machine")
    p.set_defaults(func=_cmd_launch)

    p = verbs.add_parser("evaluate", help="task metrics of a trained run on its test split")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--split", default="test", choices=("dev", "test"))
    _checkpoint_arg(p)
    _long_inputs_arg(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a resume-safe key (e.g. decoding.beam_size=4)",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = verbs.add_parser("predict", help="decode text, one example per line")
    p.add_argument("run", help="run directory or exported SavedModel directory")
    p.add_argument("--input", "-i", help="input file (default: stdin)")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    _checkpoint_arg(p, " (run directories only)")
    _decoding_args(p)
    p.set_defaults(func=_cmd_predict)

    p = verbs.add_parser("score", help="log-probability of given source/target pairs")
    p.add_argument("run", help="run directory")
    p.add_argument("--source", required=True, help="source file, one example per line")
    p.add_argument("--target", required=True, help="target file, line-aligned")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    _checkpoint_arg(p)
    _long_inputs_arg(p)
    p.set_defaults(func=_cmd_score)

    p = verbs.add_parser("export", help="write a text-in/text-out SavedModel")
    p.add_argument("run", help="run directory")
    p.add_argument("--output", help="export directory (default: <run>/export)")
    _checkpoint_arg(p)
    p.set_defaults(func=_cmd_export)

    p = verbs.add_parser(
        "attention", help="draw a seq2seq run's cross-attention for one input (PNG)"
    )
    p.add_argument("run", help="run directory (an encoder-decoder run)")
    p.add_argument("--input", "-i", required=True, help="the input text")
    p.add_argument("--output", "-o", required=True, help="PNG file to write")
    p.add_argument(
        "--layer", help="decoder layer, 1..L, or all (default: the last)", metavar="N|all"
    )
    p.add_argument(
        "--head",
        default="mean",
        metavar="N|mean|all",
        help="head 1..N, mean (over heads, the default) or all (one panel each)",
    )
    p.add_argument(
        "--target", help="draw the attention for this output text instead of the decoded one"
    )
    _checkpoint_arg(p)
    p.set_defaults(func=_cmd_attention)

    p = verbs.add_parser("curves", help="train loss and a dev metric of runs, as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (one line each)")
    p.add_argument("--output", "-o", required=True, help="PNG file to write")
    p.add_argument(
        "--metric",
        help="dev metric (eval/<metric>; default: the first run's evaluation.best_metric)",
    )
    p.add_argument(
        "--x", default="minutes", choices=("minutes", "steps"), help="the x axis (default: minutes)"
    )
    p.add_argument(
        "--reference",
        action="append",
        metavar="LABEL=VALUE",
        help="a dashed line on the metric panel (repeatable), e.g. --reference 'target=26.5'; "
        "the runs' logged anchors (eval/anchor_<name>_<metric>) are drawn too",
    )
    p.set_defaults(func=_cmd_curves)

    p = verbs.add_parser("validate", help="check an experiment and print it resolved")
    _experiment_args(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--diff", action="store_true", help="print only what differs from the defaults"
    )
    mode.add_argument(
        "--explain",
        action="store_true",
        help="print every key with its type, unit, value and meaning",
    )
    p.set_defaults(func=_cmd_validate)

    p = verbs.add_parser("schema", help="write the JSON Schema of the experiment format")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.set_defaults(func=_cmd_schema)

    p = verbs.add_parser("vocab", help="build the experiment's vocabularies")
    _experiment_args(p)
    p.set_defaults(func=_cmd_vocab)

    p = verbs.add_parser(
        "prepare", help="tokenize the training corpora once into TFRecord shards (resumable)"
    )
    _experiment_args(p)
    p.set_defaults(func=_cmd_prepare)

    p = verbs.add_parser("data-stats", help="counts, lengths, OOV rate, padding of the data")
    _experiment_args(p)
    p.set_defaults(func=_cmd_data_stats)

    p = verbs.add_parser(
        "data-service",
        help="serve streamed training data (a tf.data service) until SIGTERM or Ctrl-C",
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="port to serve on; dispatcher i on this port + i (default: free ones)",
    )
    p.add_argument("--host", default="localhost", help="the name others reach this machine by")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dispatcher+worker pairs to start here, one per trainer input pipeline (a "
        "trainer reads from a dispatcher with one worker)",
    )
    p.add_argument(
        "--worker-port-base", type=int, default=0, help="worker i serves on this port + i"
    )
    p.add_argument(
        "--worker", action="store_true", help="run one worker of the dispatcher --dispatcher"
    )
    p.add_argument("--dispatcher", help="with --worker: the dispatcher, grpc://HOST:PORT")
    p.set_defaults(func=_cmd_data_service)

    p = verbs.add_parser("bench", help="speed benchmarks: prints a table, writes JSON")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--output", default="bench/results.json", help="JSON file to write")
    p.add_argument("--only", action="append", default=[], help="run only these sections")
    p.set_defaults(func=_cmd_bench)
    for p in verbs.choices.values():
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show TensorFlow's native log lines (hidden by default)",
        )
    return parser


def _error_lines(err: KerastxError) -> list[str]:
    """The lines of a user error; an option error names each option by its flag."""
    options = getattr(err, "options", None)  # workflow.OptionError
    if options:
        return [f"{flag(key)}: {problem}" if key else problem for key, problem in options]
    return str(err).splitlines() or [type(err).__name__]


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    global _VERBOSE
    parser = build_parser()
    args = parser.parse_args(argv)
    _VERBOSE = bool(args.verbose)
    _quiet_tensorflow(_VERBOSE)
    configure_logging(args.verb, _VERBOSE)
    try:
        code = args.func(args)
    except KerastxError as err:
        for line in _error_lines(err):
            print(f"kerastx {args.verb}: error: {line}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"kerastx {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
