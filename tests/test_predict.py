"""`kerastx predict`, `kerastx score` and `kerastx evaluate` through the CLI."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kerastx import cli, inference, predict
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
