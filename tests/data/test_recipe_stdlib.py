"""The stdlib recipe: .py files -> file-split chunks; bits per byte and its anchors; the CLI."""

from __future__ import annotations

import gzip
import json
import lzma
import math
import os
import shutil
import subprocess

import pytest
import tensorflow as tf
import yaml

from kerastx import cli, evaluate, metrics, tasks
from kerastx.config import load_experiment
from kerastx.data import recipe_stdlib, tokenizers
from kerastx.data.errors import DataError
from kerastx.data.module import build_data
from tests.train import util

# A line longer than any chunk of the tests, with 2- and 3-byte characters to cut around.
LONG = "x = '" + "é✓" * 40 + "'\n"


def _body(i: int) -> str:
    return (
        f"# module {i}: ünïcode ✓\n"
        f"def f{i}(a, b):\n"
        f'    """Add {i}."""\n'
        f"\treturn a + b + {i}\n"
        + ("\n" * (i % 3))
        + (LONG if i % 5 == 0 else "")
        + ("class C:\r\n    pass\r\n" if i % 7 == 0 else "")
        + ("y = 1" if i % 4 == 0 else "z = 2\n")  # some files without a final newline
    )


def _names() -> list[tuple[int, str]]:
    """`(i, relative path)` of 3 test, 3 dev and 14 train files (by the split's hash)."""
    quota, out = {"test": 3, "dev": 3, "train": 14}, []
    for i in range(100000):
        rel = f"mod{i}.py" if i % 2 else f"pkg{i % 3}/mod{i}.py"
        split = recipe_stdlib.split_of(rel)
        if quota[split]:
            quota[split] -= 1
            out.append((i, rel))
        if not any(quota.values()):
            return out
    raise AssertionError("the hash never filled the quotas")


NAMES = _names()


def _fake_stdlib(root) -> dict[str, bytes]:
    """A directory shaped like a stdlib; returns the files the recipe must read."""
    kept = {rel: _body(i).encode("utf-8") for i, rel in NAMES}
    kept["pkg0/__init__.py"] = b""  # empty: no chunk
    left = {
        "site-packages/thirdparty.py": b"import this\n",
        "dist-packages/other.py": b"import that\n",
        "__pycache__/cached.py": b"x = 1\n",
        "test/test_mod.py": b"def test(): pass\n",
        "pkg1/tests/test_inner.py": b"def test(): pass\n",
        "idlelib/idle_test/test_x.py": b"def test(): pass\n",
        "latin1.py": "s = 'caf\xe9'\n".encode("latin-1"),
        "binary.py": b"x = 1\0\n",
        "README.txt": b"not python\n",
    }
    for rel, data in {**kept, **left}.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    del kept["pkg0/__init__.py"]
    return kept


def _records(path: str) -> list[tuple[str, int, bytes]]:
    out = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        out.append(
            (
                feature["file"].bytes_list.value[0].decode("utf-8"),
                int(feature["offset"].int64_list.value[0]),
                feature["source"].bytes_list.value[0],
            )
        )
    return out


def _manifest(paths) -> dict:
    with open(os.path.join(os.path.dirname(paths["train"]), "manifest.json")) as f:
        return json.load(f)


def test_chunks_are_cut_at_line_ends_and_reassemble_exactly():
    data = ("def f():\n    return 1\n" * 20 + LONG + "tail without newline").encode("utf-8")
    data += b"\r\nend\n"
    chunks, cut = recipe_stdlib.chunk_file(data, 64)
    assert b"".join(c for _, c in chunks) == data
    assert cut == 1  # LONG is 166 bytes
    offset = 0
    for start, chunk in chunks:
        assert start == offset and 0 < len(chunk) <= 64
        chunk.decode("utf-8")  # never cut inside a character
        offset += len(chunk)
    # Apart from the pieces of the long line, every chunk ends at a line end.
    long_start = data.index(LONG.encode())
    for start, chunk in chunks:
        if not long_start <= start < long_start + len(LONG.encode()) and start + len(chunk) < len(
            data
        ):
            assert chunk.endswith(b"\n")
    assert recipe_stdlib.chunk_file(b"", 64) == ([], 0)
    with pytest.raises(ValueError, match="at least 16"):
        recipe_stdlib.chunk_file(data, 8)


def test_recipe_splits_by_file_and_drops_nothing(tmp_path):
    root = tmp_path / "lib"
    kept = _fake_stdlib(str(root))
    paths = recipe_stdlib.prepare_stdlib(str(tmp_path / "data"), str(root), chunk_bytes=64)
    files: dict[str, list[tuple[int, bytes]]] = {}
    for split, path in paths.items():
        for rel, offset, chunk in _records(path):
            assert recipe_stdlib.split_of(rel) == split
            assert len(chunk) <= 64
            files.setdefault(rel, []).append((offset, chunk))
    assert set(files) == set(kept)  # packages, caches, tests, non-UTF-8 and NUL left out
    for rel, chunks in files.items():
        assert b"".join(c for _, c in sorted(chunks)) == kept[rel]
    by_split = {s: [r for r in kept if recipe_stdlib.split_of(r) == s] for s in paths}
    manifest = _manifest(paths)
    for split, rels in by_split.items():
        counts = manifest["counts"][split]
        assert counts["files"] == len(rels)
        assert counts["bytes"] == sum(len(kept[r]) for r in rels)
        assert counts["chunks"] == sum(len(files[r]) for r in rels)
    assert manifest["files"]["test"] == sorted(by_split["test"])
    left = manifest["left_out"]
    assert left["not_utf8"] == ["latin1.py"] and left["nul_byte"] == ["binary.py"]
    assert left["empty_files"] == 1
    assert left["long_lines_cut"] == sum(i % 5 == 0 for i, _ in NAMES)  # one LONG line each
    assert (left["test_dirs"], left["test_files"]) == (3, 3)
    test_text = b"".join(kept[r] for r in sorted(by_split["test"]))
    assert manifest["compression_bits_per_byte"]["test"] == metrics.compression_bits_per_byte(
        test_text
    )

    # With the tests: another directory, the test files in it.
    with_tests = recipe_stdlib.prepare_stdlib(
        str(tmp_path / "data"), str(root), chunk_bytes=64, include_tests=True
    )
    assert os.path.dirname(with_tests["train"]) != os.path.dirname(paths["train"])
    read = {r for p in with_tests.values() for r, _, _ in _records(p)}
    assert read == set(kept) | {
        "test/test_mod.py",
        "pkg1/tests/test_inner.py",
        "idlelib/idle_test/test_x.py",
    }

    # Written once; a changed library is refused with the directory to delete.
    assert recipe_stdlib.prepare_stdlib(str(tmp_path / "data"), str(root), 64) == paths
    with open(root / "mod1.py", "a") as f:
        f.write("# changed\n")
    with pytest.raises(DataError, match="built from other .py files .* delete"):
        recipe_stdlib.prepare_stdlib(str(tmp_path / "data"), str(root), 64)
    with pytest.raises(DataError, match="no such directory"):
        recipe_stdlib.prepare_stdlib(str(tmp_path / "data"), str(tmp_path / "missing"))


def test_byte_tokenizer_is_lossless_and_repairs_cut_characters(tmp_path):
    path = str(tmp_path / "bytes.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(e + "\n" for e in tokenizers.BYTE_ENTRIES))
    tok = tokenizers.make_tokenizer("bytes", path)
    texts = ["def f(x):\n\treturn x\r\n", "", "héllo ✓ 😀\n"]
    ids = tok.tokenize(tf.constant(texts))
    assert ids.to_list()[0][:3] == [ord("d") + 4, ord("e") + 4, ord("f") + 4]
    assert [len(r) for r in ids.to_list()] == [len(t.encode("utf-8")) for t in texts]
    assert [t.decode("utf-8") for t in tok.detokenize(ids).numpy()] == texts
    # A sampled output cut inside "é" (0xC3 0xA9), an UNK, then EOS and padding.
    cut = tf.constant([[0xC3 + 4, ord("a") + 4, 3, 2, 0]])
    assert tok.detokenize(cut).numpy()[0].decode("utf-8") == "\ufffda<unk>"
    with open(path, "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match="not a bytes vocabulary"):
        tokenizers.make_tokenizer("bytes", path)


def test_the_machine_stdlib_is_found_without_site_packages():
    root = recipe_stdlib.default_root()
    files, skipped = recipe_stdlib.python_files(root, include_tests=False)
    assert len(files) > 300 and "os.py" in files and "json/decoder.py" in files
    assert not any(
        part in ("site-packages", "dist-packages", "test", "tests")
        for f in files
        for part in f.split("/")
    )
    assert skipped["test_files"] > 0


def test_compression_anchors_are_xz_and_gzip_level_9():
    data = ("def f(x):\n    return x * 2\n" * 300 + "".join(map(chr, range(32, 1000)))).encode()
    got = metrics.compression_bits_per_byte(data)
    assert got["anchor_bytes"] == len(data)
    assert got["anchor_xz_bits_per_byte"] == 8 * len(lzma.compress(data, preset=9)) / len(data)
    gz = gzip.compress(data, compresslevel=9, mtime=0)
    assert got["anchor_gzip_bits_per_byte"] == 8 * len(gz) / len(data)
    if shutil.which("xz"):  # the same liblzma stream as the command line's `xz -9`
        cli_xz = subprocess.run(["xz", "-9", "-c"], input=data, capture_output=True, check=True)
        assert len(cli_xz.stdout) == len(lzma.compress(data, preset=9))
    assert metrics.compression_bits_per_byte(b"") == {}


def _lm_doc(tmp_path, root, **evaluation) -> dict:
    corpus = {"type": "stdlib", "stdlib_dir": str(root), "chunk_bytes": 64}
    return {
        "run_dir": str(tmp_path / "lm"),
        "data": {
            "data_dir": str(tmp_path / "data"),
            "train": [{**corpus, "split": "train"}],
            "dev": {**corpus, "split": "dev"},
            "test": {**corpus, "split": "test"},
            "source_tokenizer": {"type": "bytes"},
            "max_source_length": 65,
            "batch_size": 1024,
        },
        "model": {
            "type": "decoder_lm",
            "d_model": 32,
            "num_heads": 2,
            "ffn_dim": 64,
            "num_layers": 1,
            "max_length": 96,
        },
        "training": {"train_steps": 10, "checkpoint_every": 10, "warmup_steps": 2},
        "evaluation": {"every": 10, "best_metric": "bits_per_byte", **evaluation},
        "decoding": {"strategy": "sample", "top_p": 0.9, "max_length": 48},
        "export": {"enabled": False},
    }


def test_bits_per_byte_of_a_uniform_model(tmp_path):
    root = tmp_path / "lib"
    kept = _fake_stdlib(str(root))
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(_lm_doc(tmp_path, root)))
    cfg, _ = load_experiment([str(path)])
    task = tasks.create(cfg)
    data = build_data(cfg)
    vocab = data.source_tokenizer.vocab_size
    assert vocab == len(tokenizers.BYTE_ENTRIES) == 260

    def uniform(inputs, training=False):  # equal logits: every label costs log2(260) bits
        del training
        ids = inputs["token_ids"]
        return tf.zeros([tf.shape(ids)[0], tf.shape(ids)[1], vocab])

    out = evaluate.loss_metrics(task, uniform, data, "dev")
    dev = [r for r in kept if recipe_stdlib.split_of(r) == "dev"]
    text = b"".join(kept[r] for r in sorted(dev))
    chunks = sum(len(recipe_stdlib.chunk_file(kept[r], 64)[0]) for r in dev)
    labels = len(text) + chunks  # one per byte, one EOS per chunk
    assert out["bits_per_byte"] == pytest.approx(labels * math.log2(vocab) / len(text), rel=1e-5)
    assert out["unk_tokens"] == 0
    assert out["anchor_xz_bits_per_byte"] == 8 * len(lzma.compress(text, preset=9)) / len(text)
    assert out["anchor_bytes"] == len(text)


def test_max_source_length_must_hold_a_chunk(tmp_path):
    doc = _lm_doc(tmp_path, tmp_path)
    doc["data"]["max_source_length"] = 64
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["validate", str(path)]) == 2


def test_lm_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    root = tmp_path / "lib"
    kept = _fake_stdlib(str(root))
    prompts = ["def read_file(path):\n", "class Stack:\n    def push(self, item):\n"]
    doc = _lm_doc(tmp_path, root, prompts=prompts)
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["train", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", doc["run_dir"], "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "bits_per_byte" in printed and "anchor_xz_bits_per_byte" in printed
    with open(os.path.join(doc["run_dir"], "eval_test.json")) as f:
        result = json.load(f)
    test_text = b"".join(kept[r] for r in sorted(kept) if recipe_stdlib.split_of(r) == "test")
    assert result["anchor_bytes"] == len(test_text)
    assert result["anchor_gzip_bits_per_byte"] == pytest.approx(
        8 * len(gzip.compress(test_text, compresslevel=9, mtime=0)) / len(test_text)
    )
    assert 0 < result["bits_per_byte"] < 20 and result["unk_tokens"] == 0
    assert [c["prompt"] for c in result["completions"]] == prompts
    assert all(isinstance(c["completion"], str) for c in result["completions"])
    events = util.events(doc["run_dir"])
    assert 10 in events["eval/bits_per_byte"] and 10 in events["eval/anchor_xz_bits_per_byte"]
    markdown = tf.make_ndarray(events["eval/completions"][10].tensor).item().decode("utf-8")
    assert "prompt `'def read_file(path):\\n'`" in markdown
    assert "    def read_file(path):\n" in markdown  # the code block, indented
