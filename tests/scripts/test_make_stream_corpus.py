"""scripts/make_stream_corpus.py through its command line: shards, determinism, resume."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "make_stream_corpus.py")
VOWELS = "aeiou"


def run(directory, pairs=2000, shards=3, jobs=1, check=True):
    result = subprocess.run(
        [sys.executable, SCRIPT, str(directory), "--pairs", str(pairs), "--shards", str(shards)]
        + ["--jobs", str(jobs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def contents(directory) -> dict[str, bytes]:
    """Every file's bytes; the manifest without its timings."""
    out = {}
    for name in sorted(os.listdir(directory)):
        data = (directory / name).read_bytes()
        if name == "manifest.json":
            doc = json.loads(data)
            for key in ("seconds", "jobs", "shards_kept", "pairs_per_second_per_job"):
                doc.pop(key)
            data = json.dumps(doc, sort_keys=True).encode()
        out[name] = data
    return out


def gz_lines(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def rule(word: str) -> str:
    return "".join(c.upper() if c in VOWELS else c for c in reversed(word))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    result = run(directory)
    return directory, result.stdout


def test_shards_pair_up_and_follow_the_rule(corpus):
    directory, stdout = corpus
    srcs = sorted(directory.glob("train-*.src.gz"))
    tgts = sorted(directory.glob("train-*.tgt.gz"))
    assert [p.name for p in srcs] == [f"train-{i:05d}-of-00003.src.gz" for i in range(3)]
    assert [p.name.replace(".tgt.", ".src.") for p in tgts] == [p.name for p in srcs]
    counts = []
    for src_path, tgt_path in zip(srcs, tgts):
        src, tgt = gz_lines(src_path), gz_lines(tgt_path)
        assert len(src) == len(tgt)
        counts.append(len(src))
        for s, t in zip(src, tgt):
            words = s.split(" ")
            assert 3 <= len(words) <= 12
            assert all(2 <= len(w) <= 9 and w.isalpha() and w.islower() for w in words)
            assert t == " ".join(rule(w) for w in words)
    assert counts == [667, 667, 666]
    dev_src = (directory / "dev.src").read_text(encoding="utf-8").split("\n")[:-1]
    dev_tgt = (directory / "dev.tgt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(dev_src) == len(dev_tgt) == 2000
    assert dev_src[:10] != gz_lines(srcs[0])[:10]  # another random stream
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["pairs"] == 2000 and manifest["shards"] == 3
    text = sum(len(gzip.decompress(p.read_bytes())) for p in srcs)
    assert manifest["text_bytes"]["src"] == text
    assert manifest["gzip_bytes"]["total"] == sum(p.stat().st_size for p in srcs + tgts)
    assert 45 < manifest["mean_line_chars"] < 55
    assert stdout.splitlines()[0].startswith("shard 1/3 done, 667 pairs, ")
    assert not list(directory.glob("*.tmp")) and not (directory / ".in-progress.json").exists()


def test_two_runs_give_the_same_bytes(corpus, tmp_path):
    directory, _ = corpus
    run(tmp_path / "again", jobs=2)
    assert contents(tmp_path / "again") == contents(directory)


def test_a_rerun_remakes_only_the_missing_shard(corpus, tmp_path):
    directory, _ = corpus
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in contents(directory).items():
        if name != "manifest.json":
            (copy / name).write_bytes(data)
    # As after a kill mid-run: one shard pair gone, a half-written .tmp, no manifest.
    (copy / "train-00001-of-00003.src.gz").unlink()
    (copy / "train-00001-of-00003.tgt.gz.tmp").write_bytes(b"cut")
    (copy / "train-00001-of-00003.tgt.gz").unlink()
    result = run(copy)
    assert result.stdout.splitlines()[0] == "2/3 shards already there, kept"
    assert "shard 3/3 done" in result.stdout
    assert contents(copy) == contents(directory)
    assert json.loads((copy / "manifest.json").read_text())["shards_kept"] == 2


def test_other_parameters_are_refused(corpus):
    directory, _ = corpus
    before = contents(directory)
    result = run(directory, pairs=3000, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"make_stream_corpus: {directory} holds a corpus made with other parameters:"
        " pairs=2000 (asked 3000)"
    ]
    result = run(directory, shards=2, check=False)
    assert result.returncode == 1
    assert "shards=3 (asked 2)" in result.stderr
    assert contents(directory) == before


def test_a_killed_run_with_other_parameters_is_refused(tmp_path):
    # No manifest yet: the parameters the killed run recorded first, and shards named for
    # another shard count, each stop a run that would mix two corpora.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".in-progress.json").write_text(
        json.dumps({"generator_version": 1, "seed": 0, "pairs": 9, "shards": 3, "dev_pairs": 2000})
    )
    result = run(tmp_path / "a", check=False)
    assert result.returncode == 1 and "pairs=9 (asked 2000)" in result.stderr
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train-00000-of-00002.src.gz").write_bytes(b"")
    result = run(tmp_path / "b", check=False)
    assert result.returncode == 1
    assert "holds shards of another corpus (train-00000-of-00002.src.gz" in result.stderr
