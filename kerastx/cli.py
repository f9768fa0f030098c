"""The `kerastx` command line: parses arguments and calls one library function per verb.

No logic lives here. Exit codes: 0 success; 2 a problem with the user's input (bad
config, bad data, unknown run), printed as one line per problem without a traceback;
1 an internal error (a bug: the traceback is shown); 75 training was preempted by
SIGTERM after saving a checkpoint (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys

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


def configure_logging() -> None:
    """kerastx's messages at INFO on stderr, one line each, for the command line only.

    The handler goes on the root logger, as `logging.basicConfig` would put it: the
    `kerastx` logger keeps propagating (a notebook or an application configures logging
    its own way), and a library that calls `basicConfig` later (absl does, on its first
    message) finds a handler and adds none, so no message is printed twice.
    """
    root = logging.getLogger()
    if not any(getattr(h, "kerastx_cli", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.kerastx_cli = True
        root.addHandler(handler)
    logging.getLogger("kerastx").setLevel(logging.INFO)


def _workflow():
    """`kerastx.workflow`, imported when a verb needs it (so `validate` and `schema`
    never import TensorFlow). A failing import is a bug: its traceback shows (exit 1)."""
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


def _decoding_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (defaults: the run's decoding: section)")
    g.add_argument("--strategy", choices=("greedy", "beam", "sample"))
    g.add_argument("--beam-size", type=int)
    g.add_argument("--n-best", type=int)
    g.add_argument("--length-penalty", type=float)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--max-length", type=int)
    g.add_argument("--batch-size", type=int, help="examples decoded together")


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
    from kerastx.data import run_vocab

    cfg, _ = _load(args)
    return run_vocab(cfg)


def _cmd_data_stats(args):
    from kerastx.data import run_data_stats

    cfg, _ = _load(args)
    return run_data_stats(cfg)


def _cmd_evaluate(args):
    _workflow().evaluate(args.run, split=args.split, overrides=args.overrides)
    return 0


def _cmd_predict(args):
    return _workflow().predict_file(
        args.run, input_path=args.input, output_path=args.output, decoding=_decoding_overrides(args)
    )


def _cmd_score(args):
    return _workflow().score(
        args.run, source=args.source, target=args.target, output_path=args.output
    )


def _cmd_export(args):
    _workflow().export(args.run, output_dir=args.output)
    return 0


def _cmd_launch(args):
    from kerastx.train import launch

    return launch.run(args.experiment, args.overrides, workers=args.workers)


def _cmd_bench(args):
    from kerastx import bench

    return bench.run(quick=args.quick, output=args.output, only=args.only)


def _decoding_overrides(args) -> dict:
    keys = (
        "strategy",
        "beam_size",
        "n_best",
        "length_penalty",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "max_length",
        "batch_size",
    )
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
    _decoding_args(p)
    p.set_defaults(func=_cmd_predict)

    p = verbs.add_parser("score", help="log-probability of given source/target pairs")
    p.add_argument("run", help="run directory")
    p.add_argument("--source", required=True, help="source file, one example per line")
    p.add_argument("--target", required=True, help="target file, line-aligned")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    p.set_defaults(func=_cmd_score)

    p = verbs.add_parser("export", help="write a text-in/text-out SavedModel")
    p.add_argument("run", help="run directory")
    p.add_argument("--output", help="export directory (default: <run>/export)")
    p.set_defaults(func=_cmd_export)

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

    p = verbs.add_parser("data-stats", help="counts, lengths, OOV rate, padding of the data")
    _experiment_args(p)
    p.set_defaults(func=_cmd_data_stats)

    p = verbs.add_parser("bench", help="speed benchmarks: prints a table, writes JSON")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--output", default="bench/results.json", help="JSON file to write")
    p.add_argument("--only", action="append", default=[], help="run only these sections")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        code = args.func(args)
    except KerastxError as err:
        for line in str(err).splitlines() or [type(err).__name__]:
            print(f"kerastx {args.verb}: error: {line}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"kerastx {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
