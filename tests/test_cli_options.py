"""Option values of `predict`, `score`, `evaluate`, `export` and `launch` through the CLI:
checked by the config's own rules (bounds, strategy, cross-field), one line naming the
flag, exit code 2; `--checkpoint` reaches `load_run` as `export.checkpoint`."""

import os
import re
import shutil

import pytest
import yaml

from kerastx import cli, workflow
from kerastx.errors import KerastxError
from tests import trained_runs

ROOT = trained_runs.ROOT


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """The copy-task run directory and its export (the same model)."""
    run_dir = trained_runs.copy_export(tmp_path_factory.getbasetemp())
    return {"run": run_dir, "export": os.path.join(run_dir, "export")}


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("a b c\nd e\n", encoding="utf-8")
    return str(path)


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if re.match(r"kerastx [\w-]+: (error|warning)", line)]


STRATEGY = "only by beam: choose that strategy or leave the option out"
CASES = [
    (["--beam-size", "0"], ["--beam-size: must be >= 1; got 0"]),
    (["--strategy", "beam", "--beam-size", "0"], ["--beam-size: must be >= 1; got 0"]),
    (["--strategy", "sample", "--top-p", "5"], ["--top-p: must be <= 1; got 5.0"]),
    (["--strategy", "sample", "--top-p", "nan"], ["--top-p: must be a finite number; got nan"]),
    (["--strategy", "sample", "--temperature", "0"], ["--temperature: must be > 0; got 0.0"]),
    (["--batch-size", "0"], ["--batch-size: must be >= 1; got 0"]),
    (
        ["--beam-size", "0", "--top-k", "-1"],
        ["--beam-size: must be >= 1; got 0", "--top-k: must be >= 0; got -1"],
    ),
    (["--n-best", "3"], [f"--n-best: not read by strategy 'greedy' ({{where}}); {STRATEGY}"]),
    (
        ["--top-k", "3"],
        [
            "--top-k: not read by strategy 'greedy' ({where}); only by sample: choose that "
            "strategy or leave the option out"
        ],
    ),
    (
        ["--strategy", "greedy", "--length-penalty", "1.0"],
        [f"--length-penalty: not read by strategy 'greedy' (the chosen strategy); {STRATEGY}"],
    ),
    (
        ["--strategy", "beam", "--beam-size", "2", "--n-best", "3"],
        ["--n-best: must be <= beam_size (2); got 3"],
    ),
    (
        ["--max-length", "33"],
        [
            "--max-length: must be <= model.max_length (32, set at {config}:{line}); got 33",
        ],
    ),
]


@pytest.mark.parametrize("kind", ["run", "export"])
@pytest.mark.parametrize("flags,lines", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_decoding_flag_is_one_line_naming_it(
    targets, kind, flags, lines, input_file, tmp_path, capsys
):
    path = targets[kind]
    out = tmp_path / "out.txt"
    code = cli.main(["predict", path, "-i", input_file, "-o", str(out), *flags])
    config = os.path.join(path, "assets", "config.yaml") if kind == "export" else None
    config = config or os.path.join(path, "config.yaml")
    expected = [
        "kerastx predict: error: "
        + re.escape(line)
        .replace(re.escape("{where}"), re.escape(f"decoding.strategy of {path}"))
        .replace(re.escape("{config}"), re.escape(config))
        .replace(re.escape("{line}"), r"\d+")
        for line in lines
    ]
    shown = _errors(capsys)
    assert len(shown) == len(expected), shown
    for line, pattern in zip(shown, expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert code == 2
    assert not out.exists()  # nothing decoded, nothing written


def test_good_flags_of_each_strategy_still_decode(targets, input_file, capsys):
    for flags in (
        ["--strategy", "beam", "--beam-size", "2", "--n-best", "2", "--length-penalty", "0"],
        ["--strategy", "sample", "--top-k", "2", "--top-p", "0.9", "--seed", "3"],
        ["--strategy", "greedy", "--max-length", "8", "--batch-size", "1"],
    ):
        assert cli.main(["predict", targets["export"], "-i", input_file, *flags]) == 0
        out = capsys.readouterr().out.splitlines()
        assert len(out) == (4 if "--n-best" in flags else 2), flags


def test_the_python_api_names_the_option_by_its_key(targets):
    with pytest.raises(workflow.OptionError) as err:
        workflow.predict_lines(targets["run"], ["a"], {"beam_size": 0, "top_p": 2})
    assert str(err.value) == "beam_size: must be >= 1; got 0\ntop_p: must be <= 1; got 2.0"
    with pytest.raises(workflow.OptionError, match=r"^beam: not a decoding option \(use: "):
        workflow.predict_lines(targets["run"], ["a"], {"beam": 3})


def test_an_export_has_one_set_of_weights(targets, input_file, capsys):
    path = targets["export"]
    assert cli.main(["predict", path, "-i", input_file, "--checkpoint", "best"]) == 2
    assert _errors(capsys) == [
        f"kerastx predict: error: --checkpoint: {path} is an export, which holds one set of "
        "weights; give the run directory to choose a checkpoint"
    ]


def test_an_export_cannot_decode_past_its_cache(targets, input_file, tmp_path, capsys):
    # An export whose decoding.max_length (its cache) is below model.max_length: a copy
    # of the copy-task export with the setting lowered in its config.
    export_dir = str(tmp_path / "export")
    shutil.copytree(targets["export"], export_dir)
    config = os.path.join(export_dir, "assets", "config.yaml")
    with open(config, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["decoding"]["max_length"] = 16
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f)
    assert cli.main(["predict", export_dir, "-i", input_file, "--max-length", "20"]) == 2
    assert _errors(capsys) == [
        f"kerastx predict: error: --max-length: must be <= 16 for {export_dir} (its "
        "decoding.max_length, the size of its cache); got 20"
    ]
    assert cli.main(["predict", export_dir, "-i", input_file, "--max-length", "16"]) == 0


def test_launch_with_no_worker_is_one_line(capsys):
    experiment = os.path.join(ROOT, "experiments", "copy_task.yaml")
    assert cli.main(["launch", experiment, "--workers", "0"]) == 2
    assert _errors(capsys) == ["kerastx launch: error: --workers: must be >= 1; got 0"]
    assert cli.main(["launch", experiment, "--workers", "-3"]) == 2
    assert _errors(capsys) == ["kerastx launch: error: --workers: must be >= 1; got -3"]


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "{run}", "--checkpoint", "{choice}"],
        ["predict", "{run}", "-i", "{input}", "--checkpoint", "{choice}"],
        [
            "score",
            "{run}",
            "--source",
            "{input}",
            "--target",
            "{input}",
            "--checkpoint",
            "{choice}",
        ],
        ["export", "{run}", "--checkpoint", "{choice}"],
    ],
    ids=["evaluate", "predict", "score", "export"],
)
def test_checkpoint_flag_becomes_the_export_checkpoint_override(
    targets, argv, input_file, monkeypatch, capsys
):
    seen = []

    def load_run(run_dir, overrides=None):
        seen.append((run_dir, list(overrides or [])))
        raise KerastxError("stopped after load_run")

    monkeypatch.setattr(workflow.runs, "load_run", load_run)
    for choice in ("auto", "best", "last", "averaged"):
        args = [
            a.replace("{run}", targets["run"])
            .replace("{input}", input_file)
            .replace("{choice}", choice)
            for a in argv
        ]
        assert cli.main(args) == 2
        assert seen.pop() == (targets["run"], [f"export.checkpoint={choice}"])


def test_an_unknown_checkpoint_choice_is_refused_by_argparse(targets, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", targets["run"], "--checkpoint", "newest"])
    assert stop.value.code == 2
    assert (
        "kerastx export: error: argument --checkpoint: invalid choice: 'newest' (choose from "
        "'auto', 'best', 'last', 'averaged')"
    ) in capsys.readouterr().err
