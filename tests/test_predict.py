"""`kerastx predict`, `kerastx score` and `kerastx evaluate` through the CLI."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml

from kerastx import cli, inference, predict, workflow
from kerastx.runs import load_run
from tests import trained_runs

LINES = ["d e f g h i j", "a", "", "k b", "c c c c", "t s r", "q", "b a b a b a b a"]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    return trained_runs.copy_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return os.path.join(trained_runs.copy_export(tmp_path_factory.getbasetemp()), "export")


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_batches_are_length_sorted_and_stable():
    batches = list(predict.length_sorted_batches(["ccc", "a", "bb", "", "dd", "e"], 2))
    assert batches == [[3, 1], [5, 2], [4, 0]]


def test_run_dir_and_export_dir_give_the_same_outputs_in_input_order(
    copy_run, export_dir, tmp_path, monkeypatch, capsys
):
    source = write(tmp_path / "in.txt", LINES)
    outputs = {}
    out = str(tmp_path / "run.txt")
    assert cli.main(["predict", copy_run, "-i", source, "-o", out, "--batch-size", "3"]) == 0
    outputs["run"] = read(out)
    # The export from stdin to stdout.
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in LINES)))
    assert cli.main(["predict", export_dir, "--batch-size", "3"]) == 0
    outputs["export"] = capsys.readouterr().out.splitlines()
    assert outputs["run"] == outputs["export"]
    assert len(outputs["run"]) == len(LINES)
    # Each line decoded alone gives the same output: the order is the input order.
    run = load_run(copy_run)
    settings = inference.settings_from_config(run.cfg.decoding)
    alone = run.task.predict(run.model, run.data, LINES, settings, 1)
    assert outputs["run"] == [o[0] for o in alone.outputs]


def test_n_best_output_format(copy_run, export_dir, tmp_path):
    source = write(tmp_path / "in.txt", LINES[:4])
    flags = ["--strategy", "beam", "--beam-size", "3", "--n-best", "2"]
    results = {}
    for name, path in (("run", copy_run), ("export", export_dir)):
        out = str(tmp_path / f"{name}.txt")
        assert cli.main(["predict", path, "-i", source, "-o", out, *flags]) == 0
        results[name] = [line.split(" ||| ") for line in read(out)]
    run, exported = results["run"], results["export"]
    assert [r[0] for r in run] == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert [r[:2] for r in run] == [r[:2] for r in exported]
    np.testing.assert_allclose([float(r[2]) for r in run], [float(r[2]) for r in exported])
    for i in range(4):
        first, second = float(run[2 * i][2]), float(run[2 * i + 1][2])
        assert first >= second
        assert run[2 * i][1] != run[2 * i + 1][1]


def _scored_pairs(loaded, texts, key, encode):
    """Greedy outputs that end with EOS, with their ids and log-probabilities."""
    settings = inference.settings_from_config(loaded.cfg.decoding)
    ids = encode(loaded.data.source_tokenizer, tf.constant(texts), 32)
    result = inference.Decoder(loaded.model, loaded.task, settings)({key: ids})
    outputs = loaded.data.target_tokenizer.detokenize(result.ids).numpy()
    keep = []
    for b, length in enumerate(result.lengths.numpy()):
        row = result.ids[b, :length].numpy()
        if length and row[-1] == inference.EOS_ID and not np.isin(row, [1, 3]).any():
            keep.append((texts[b], outputs[b].decode(), float(result.scores[b]), int(length)))
    assert len(keep) >= len(texts) // 2
    return keep


def _score(run_dir, pairs, tmp_path):
    src = write(tmp_path / "src.txt", [p[0] for p in pairs])
    tgt = write(tmp_path / "tgt.txt", [p[1] for p in pairs])
    out = str(tmp_path / "scores.txt")
    assert cli.main(["score", run_dir, "--source", src, "--target", tgt, "-o", out]) == 0
    return [(float(a), int(b)) for a, b in (line.split("\t") for line in read(out))]


def test_score_equals_the_log_probability_of_the_decoder(copy_run, tmp_path):
    loaded = load_run(copy_run)
    pairs = _scored_pairs(loaded, LINES, "source_ids", inference.encode_source)
    scored = _score(copy_run, pairs, tmp_path)
    np.testing.assert_allclose([s for s, _ in scored], [p[2] for p in pairs], atol=1e-4)
    assert [n for _, n in scored] == [p[3] for p in pairs]


def test_score_of_a_decoder_lm_continuation(tmp_path_factory, tmp_path):
    run_dir = trained_runs.lm_run(tmp_path_factory.getbasetemp())
    loaded = load_run(run_dir)
    prompts = ["c d e", "k", "", "p q r s t u"]
    pairs = _scored_pairs(loaded, prompts, "prompt_ids", inference.encode_prompt)
    scored = _score(run_dir, pairs, tmp_path)
    np.testing.assert_allclose([s for s, _ in scored], [p[2] for p in pairs], atol=1e-4)
    assert [n for _, n in scored] == [p[3] for p in pairs]


def test_score_with_mismatched_line_counts_is_one_line_naming_both_files(
    copy_run, tmp_path, capsys
):
    src = write(tmp_path / "src.txt", ["a b", "c"])
    tgt = write(tmp_path / "tgt.txt", ["a b"])
    assert cli.main(["score", copy_run, "--source", src, "--target", tgt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert src in err[0] and tgt in err[0] and "2 lines" in err[0] and "has 1" in err[0]


def test_predict_of_a_missing_directory_is_a_user_error(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "nope")]) == 2
    assert "no such run or export directory" in capsys.readouterr().err


def test_evaluate_writes_the_test_metrics_as_json(copy_run):
    path = os.path.join(copy_run, "eval_test.json")
    if os.path.exists(path):
        os.remove(path)
    overrides = ["--set", "decoding.strategy=beam", "--set", "decoding.beam_size=2"]
    assert cli.main(["evaluate", copy_run, *overrides]) == 0
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    assert results["split"] == "test"
    assert results["decoding"]["strategy"] == "beam" and results["decoding"]["beam_size"] == 2
    assert 0.0 <= results["accuracy"] <= 100.0
    assert results["loss"] > 0 and results["perplexity"] == pytest.approx(
        np.exp(results["loss"]), rel=1e-6
    )
    assert results["decoded"] > 50  # distinct test sources decoded


# -- long inputs, stdin ----------------------------------------------------------------------


def _symbols(count: int) -> str:
    """`count` tokens of the copy task's vocabulary."""
    return " ".join(trained_runs.LETTERS[i % 20] for i in range(count))


# max_source_length is 32: a source keeps 31 tokens and its EOS.
LONG = ["a b c", _symbols(40), "d e", _symbols(31), _symbols(32), _symbols(50)]
WARNING = (
    "kerastx {verb}: warning: 3 of 6 {what} were longer than data.max_source_length=32 "
    "tokens and were cut to it (lines 2, 5, 6)"
)


def _kerastx_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("kerastx ")]


def test_long_inputs_are_cut_counted_and_reported_in_one_line(
    copy_run, export_dir, tmp_path, capsys
):
    source = write(tmp_path / "in.txt", LONG)
    outputs = {}
    for name, path in (("run", copy_run), ("export", export_dir)):
        out = str(tmp_path / f"{name}.txt")
        assert cli.main(["predict", path, "-i", source, "-o", out]) == 0
        assert _kerastx_lines(capsys.readouterr().err) == [
            WARNING.format(verb="predict", what="inputs")
        ]
        outputs[name] = read(out)
        assert len(outputs[name]) == len(LONG)  # one output per input, cut or not
    assert outputs["run"] == outputs["export"]
    # A cut input decodes as its first 31 tokens do.
    alone = workflow.predict_lines(copy_run, [_symbols(31)])
    assert outputs["run"][1] == outputs["run"][3] == alone[0]
    capsys.readouterr()
    # Short inputs: no line at all.
    short = write(tmp_path / "short.txt", ["a b", _symbols(31)])
    assert cli.main(["predict", copy_run, "-i", short]) == 0
    assert _kerastx_lines(capsys.readouterr().err) == []


def test_long_inputs_are_an_error_with_the_flag_or_the_config_key(
    copy_run, export_dir, tmp_path, capsys
):
    source = write(tmp_path / "in.txt", LONG)
    message = (
        f"kerastx predict: error: {source}:2: longer than data.max_source_length=32 tokens "
        "(decoding.long_inputs: error; 3 of 6 inputs: lines 2, 5, 6); shorten them, or let "
        "them be cut with --long-inputs truncate"
    )
    out = tmp_path / "out.txt"
    for path in (copy_run, export_dir):
        argv = ["predict", path, "-i", source, "-o", str(out), "--long-inputs", "error"]
        assert cli.main(argv) == 2
        assert _kerastx_lines(capsys.readouterr().err) == [message]
        assert not out.exists()
    # decoding.long_inputs: error in the run's config, and the flag overriding it.
    run_dir = str(tmp_path / "strict")
    shutil.copytree(copy_run, run_dir)
    config = os.path.join(run_dir, "config.yaml")
    with open(config, encoding="utf-8") as f:
        text = f.read()
    with open(config, "w", encoding="utf-8") as f:
        f.write(text.replace("long_inputs: truncate", "long_inputs: error"))
    assert cli.main(["predict", run_dir, "-i", source]) == 2
    assert _kerastx_lines(capsys.readouterr().err) == [message]
    assert cli.main(["predict", run_dir, "-i", source, "--long-inputs", "truncate"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(LONG)


def test_score_reports_and_refuses_long_sources(copy_run, tmp_path, capsys):
    src = write(tmp_path / "src.txt", LONG)
    # Targets the model takes whole (a longer one is refused: tests/test_bad_inputs.py).
    tgt = write(tmp_path / "tgt.txt", [line[:61] for line in LONG])
    assert cli.main(["score", copy_run, "--source", src, "--target", tgt]) == 0
    captured = capsys.readouterr()
    assert _kerastx_lines(captured.err) == [WARNING.format(verb="score", what="sources")]
    assert len(captured.out.splitlines()) == len(LONG)
    argv = ["score", copy_run, "--source", src, "--target", tgt, "--long-inputs", "error"]
    assert cli.main(argv) == 2
    assert _kerastx_lines(capsys.readouterr().err) == [
        f"kerastx score: error: {src}:2: longer than data.max_source_length=32 tokens "
        "(decoding.long_inputs: error; 3 of 6 sources: lines 2, 5, 6); shorten them, or let "
        "them be cut with --long-inputs truncate"
    ]


def test_tokens_kept_by_each_family_are_what_its_encoder_keeps(copy_run, tmp_path_factory):
    runs = {"seq2seq": load_run(copy_run)}
    runs["lm"] = load_run(trained_runs.lm_run(tmp_path_factory.getbasetemp()))
    for name, run in runs.items():
        kept = run.task.input_tokens_kept()
        limit = run.cfg.data.max_source_length
        tokenizer = run.data.source_tokenizer
        texts = [_symbols(kept - 1), _symbols(kept), _symbols(kept + 1), _symbols(kept + 9)]
        ids = run.task.encode_text(tokenizer, tf.constant(texts), limit).numpy()
        real = (ids > inference.EOS_ID).sum(axis=1)  # tokens, without BOS/EOS/padding
        assert list(real) == [kept - 1, kept, kept, kept], name
        assert predict.long_lines(tokenizer.tokenize, texts, kept, batch_size=3) == [2, 3]


def test_evaluate_counts_long_test_examples_and_can_refuse_them(copy_run, tmp_path, capsys):
    run_dir = str(tmp_path / "long_test")
    shutil.copytree(copy_run, run_dir)
    config = os.path.join(run_dir, "config.yaml")
    with open(config, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc["data"]["test"]["min_length"] = 20
    doc["data"]["test"]["max_length"] = 40  # some over max_source_length (32)
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f)
    loaded = load_run(run_dir)
    lengths = [
        len(text.split())
        for batch in loaded.data.eval_dataset("test", 1000)
        for text in batch["source_text"].numpy()
    ]
    long = sum(n + 1 > 32 for n in lengths)
    assert 0 < long < len(lengths) == 100
    assert cli.main(["evaluate", run_dir]) == 0
    assert _kerastx_lines(capsys.readouterr().err) == [
        f"kerastx evaluate: warning: {long} of 100 test examples were longer than "
        "data.max_source_length=32 or data.max_target_length=32 tokens and were cut to them "
        "for the model (the metrics use the whole references)"
    ]
    with open(os.path.join(run_dir, "eval_test.json"), encoding="utf-8") as f:
        assert json.load(f)["truncated"] == long
    assert cli.main(["evaluate", run_dir, "--long-inputs", "error"]) == 2
    assert _kerastx_lines(capsys.readouterr().err) == [
        f"kerastx evaluate: error: data.test: {long} of 100 examples are longer than "
        "data.max_source_length=32 or data.max_target_length=32 tokens "
        "(decoding.long_inputs: error); shorten them, or let them be cut with "
        "--long-inputs truncate"
    ]


BAD_UTF8 = b"a b\n\xff\xfe c\nd\n"


def test_invalid_utf8_on_stdin_is_the_same_one_line_as_in_a_file(
    copy_run, export_dir, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "bad.txt"
    path.write_bytes(BAD_UTF8)
    problem = "2: not valid UTF-8 (byte 0xff at column 1); give UTF-8 text"
    for run in (copy_run, export_dir):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(BAD_UTF8)))
        assert cli.main(["predict", run]) == 2
        assert _kerastx_lines(capsys.readouterr().err) == [
            f"kerastx predict: error: <stdin>:{problem}"
        ]
        assert cli.main(["predict", run, "--input", str(path)]) == 2
        assert _kerastx_lines(capsys.readouterr().err) == [
            f"kerastx predict: error: {path}:{problem}"
        ]


def test_stdin_and_a_file_give_the_same_lines(copy_run, tmp_path, monkeypatch, capsys):
    # Windows line ends and a byte order mark are removed the same way; a lone \r
    # inside a line does not split it (one output per line an editor shows).
    data = "\ufeffa b\r\nc d\re\n\nf\n".encode()
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    assert predict.read_lines(str(path)) == ["a b", "c d\re", "", "f"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert predict.read_lines(None) == ["a b", "c d\re", "", "f"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["predict", copy_run]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
