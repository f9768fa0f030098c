"""The prepared shards of a run (`kerastx prepare`, see `kerastx.data.prepare`): where
they are, what they were made from, and whether training may read them."""

from __future__ import annotations

import dataclasses
import json
import os

from kerastx.data.errors import DataError

PREPARED_DIR = "prepared"
MANIFEST = "manifest.json"
VERSION = 1


def shard_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, PREPARED_DIR, f"shard-{index:05d}.tfrecord")


def _inputs(stream_shards) -> list[list]:
    out = []
    for shard in stream_shards:
        for path in shard.paths:
            st = os.stat(path)
            out.append([os.path.abspath(path), st.st_size, int(st.st_mtime)])
    return out


def expected_manifest(cfg, module) -> dict:
    """The manifest prepared shards of this experiment must have (without `done`)."""
    vocab_manifest = os.path.join(cfg.run_dir, "vocab", "manifest.json")
    vocab = {}
    if os.path.exists(vocab_manifest):
        with open(vocab_manifest, encoding="utf-8") as f:
            vocab = json.load(f)
    d = cfg.data
    return {
        "version": VERSION,
        "inputs": _inputs(module.stream_shards),
        "shards": len(module.stream_shards),
        "vocabulary": {k: v for k, v in vocab.items() if k != "sample"},
        "tokenizers": [
            dataclasses.asdict(d.source_tokenizer),
            dataclasses.asdict(d.target_tokenizer),
        ],
        "invalid_utf8": d.invalid_utf8,
        "model_type": cfg.model.type,
    }


def has_prepared(run_dir: str) -> bool:
    """Whether the run directory holds prepared shards (complete or not)."""
    return os.path.exists(os.path.join(run_dir, PREPARED_DIR, MANIFEST))


def read_manifest(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, PREPARED_DIR, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable manifest of prepared shards ({err})") from None


def write_manifest(run_dir: str, manifest: dict) -> None:
    path = os.path.join(run_dir, PREPARED_DIR, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)


def difference(stored: dict, expected: dict) -> str | None:
    for key in ("version", "shards", "model_type", "invalid_utf8", "tokenizers", "vocabulary"):
        if stored.get(key) != expected[key]:
            return f"{key} differs"
    for (path, size, mtime), old in zip(expected["inputs"], stored.get("inputs", [])):
        if [path, size, mtime] != old:
            return f"{path} changed since (size or modification time)"
    if len(stored.get("inputs", [])) != len(expected["inputs"]):
        return "the input files differ"
    return None


def prepared_paths(cfg, module) -> list[str] | None:
    """The prepared shards training should read, or None when there are none.

    Raises:
        DataError: `run_dir/prepared/` exists but is incomplete or was made from other
            inputs or vocabularies (one line saying what to rerun).
    """
    stored = read_manifest(cfg.run_dir)
    if stored is None:
        return None
    where = os.path.join(cfg.run_dir, PREPARED_DIR)
    why = difference(stored, expected_manifest(cfg, module))
    if why:
        raise DataError(
            f"{where}: prepared from other data ({why}); run `kerastx prepare` again after "
            f"deleting it, or delete it to stream the text"
        )
    done = set(stored.get("done", []))
    missing = [i for i in range(stored["shards"]) if i not in done]
    if missing:
        raise DataError(
            f"{where}: incomplete ({len(done)} of {stored['shards']} shards prepared); run "
            f"`kerastx prepare` again to finish it, or delete it to stream the text"
        )
    return [shard_path(cfg.run_dir, i) for i in range(stored["shards"])]
