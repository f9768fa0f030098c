"""The source-code recipe: the Python standard library's `.py` files as language-model text.

Source: the sources of the Python that runs kerastx (`sysconfig.get_paths()["stdlib"]`,
or `stdlib_dir`); nothing is downloaded. What the recipe does, in order:

1. Walks the directory (sorted, symlinked directories not followed) and keeps the `.py`
   files. Left out: `site-packages/` and `dist-packages/` (installed packages, not the
   standard library), `__pycache__/`, and - unless `include_tests: true` - every
   directory named `test`, `tests` or `idle_test` (the regression suite and the
   packages' own tests: 19.4 MB in 1,056 files for CPython 3.11, more than the 12.1 MB of
   the library itself, and the place of the deliberately broken files: bad encodings,
   bad syntax). A file that is not valid UTF-8 or holds a NUL byte is left out and
   listed (none outside the test directories in CPython 3.11).
2. Splits by file: `sha256(path relative to the root, "/"-separated)`, first 8 bytes
   big-endian, modulo 10,000; below 300 -> test, 300-499 -> dev, the rest -> train.
3. Cuts each file at line ends into chunks of at most `chunk_bytes` UTF-8 bytes, newlines
   included, so an example is many lines of context. A line longer than `chunk_bytes`
   is cut at character boundaries (counted as `long_lines_cut`). Nothing is dropped:
   the chunks of a file, in offset order, are the file byte for byte (also a `\\r` or a
   missing final newline); an empty file has no chunk (counted).
4. Writes `<data_dir>/stdlib/<name>/{train,dev,test}.tfrecord`: one `tf.train.Example`
   per chunk, in (file, offset) order, with the features `source` (the chunk's UTF-8
   bytes: the text the language model reads, `source_column: source`), `file` (the
   relative path) and `offset` (int64: the chunk's first byte in the file), and
   `manifest.json`: files, bytes and chunks per split, the dev and test file names,
   what was left out, and the `xz -9` / `gzip -9` bits per byte of the dev and test
   files (`kerastx.metrics.compression_bits_per_byte` on the split's files
   concatenated in path order, the text a language model's `bits_per_byte` is
   measured on).

`<name>` is `<basename of the root>-<sha256(root)[:8]>-c<chunk_bytes>` (`-tests` with the
tests), e.g. `python3.11-1a2b3c4d-c1024`. The files are written once; a later call checks
that the `.py` files on disk (path and size) are still those the manifest lists (a Python
upgrade changes them) and stops with an error naming the directory otherwise.

Counts for CPython 3.11.7 without tests (1,056 test files, 19.4 MB, left out; 3 empty
files; no file left out for its encoding; no line over 512 bytes):

| split | files | bytes      | chunks of 512 bytes | chunks of 1024 bytes |
|-------|-------|------------|---------------------|----------------------|
| train |   698 | 11,510,728 |              23,985 |               11,875 |
| dev   |    10 |    236,809 |                 493 |                  242 |
| test  |    23 |    371,104 |                 773 |                  385 |

`xz -9` / `gzip -9` on the held-out files: dev 1.760 / 2.007, test 1.693 / 1.949 bits
per byte. Another Python version gives other files and figures: the manifest has them.

Tokenizer: use `bytes` (UTF-8 bytes, 260 ids): lossless on any text, newlines and tabs
included. The `chars` tokenizer cannot model this text: a vocabulary file holds one
entry a line, so a newline can never be an entry and every line end would be UNK.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig

from kerastx.data.errors import DataError
from kerastx.data.recipe_files import write_manifest

SPLITS = ("train", "dev", "test")
TEST_BELOW = 300
DEV_BELOW = 500
PACKAGE_DIRS = ("site-packages", "dist-packages", "__pycache__")
TEST_DIRS = ("test", "tests", "idle_test")
MIN_CHUNK_BYTES = 16


def default_root() -> str:
    """The standard library directory of the running Python."""
    return sysconfig.get_paths()["stdlib"]


def split_of(relpath: str) -> str:
    """The split of a file by its path relative to the root: "train", "dev" or "test"."""
    digest = hashlib.sha256(relpath.replace(os.sep, "/").encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10000
    if bucket < TEST_BELOW:
        return "test"
    return "dev" if bucket < DEV_BELOW else "train"


def recipe_dir(data_dir: str, root: str, chunk_bytes: int, include_tests: bool) -> str:
    """`<data_dir>/stdlib/<name>` (see the module docstring)."""
    root = os.path.realpath(root)
    tag = hashlib.sha256(root.encode("utf-8")).hexdigest()[:8]
    name = f"{os.path.basename(root) or 'root'}-{tag}-c{chunk_bytes}"
    return os.path.join(data_dir, "stdlib", name + ("-tests" if include_tests else ""))


def python_files(root: str, include_tests: bool) -> tuple[list[str], dict]:
    """The `.py` files under `root` (relative, "/"-separated, sorted) and what the walk
    left out: `{"test_dirs": n, "test_files": n, "test_bytes": n}`."""
    found, skipped = [], {"test_dirs": 0, "test_files": 0, "test_bytes": 0}
    for here, dirs, files in os.walk(root):
        keep = []
        for d in sorted(dirs):
            if d in PACKAGE_DIRS:
                continue
            if d in TEST_DIRS and not include_tests:
                skipped["test_dirs"] += 1
                for sub, _, names in os.walk(os.path.join(here, d)):
                    for n in names:
                        if n.endswith(".py"):
                            skipped["test_files"] += 1
                            skipped["test_bytes"] += os.path.getsize(os.path.join(sub, n))
                continue
            keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            path = os.path.join(here, name)
            if name.endswith(".py") and os.path.isfile(path):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found), skipped


def _cut_line(line: bytes, limit: int) -> list[bytes]:
    """A line as pieces of at most `limit` bytes, cut before a UTF-8 lead byte."""
    pieces, start = [], 0
    while len(line) - start > limit:
        end = start + limit
        while end > start + 1 and (line[end] & 0xC0) == 0x80:  # inside a character
            end -= 1
        pieces.append(line[start:end])
        start = end
    pieces.append(line[start:])
    return pieces


def chunk_file(data: bytes, limit: int) -> tuple[list[tuple[int, bytes]], int]:
    """A file's bytes as `(offset, chunk)` pairs of at most `limit` bytes cut at line ends.

    Lines end after `\\n`; a line longer than `limit` is cut into pieces (at UTF-8
    character boundaries), each starting a chunk. `b"".join(chunks) == data`.

    Returns:
        `(chunks, long_lines_cut)`.
    """
    if limit < MIN_CHUNK_BYTES:
        raise ValueError(f"limit must be at least {MIN_CHUNK_BYTES}; got {limit}")
    lines = data.split(b"\n")
    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    chunks: list[tuple[int, bytes]] = []
    current: list[bytes] = []
    size = start = offset = cut = 0
    for line in lines:
        pieces = _cut_line(line, limit) if len(line) > limit else [line]
        cut += len(pieces) > 1
        for piece in pieces:
            if size + len(piece) > limit and current:
                chunks.append((start, b"".join(current)))
                current, size = [], 0
            if not current:
                start = offset
            current.append(piece)
            size += len(piece)
            offset += len(piece)
    if current:
        chunks.append((start, b"".join(current)))
    return chunks, cut


def _fingerprint(root: str, files: list[str]) -> list[list]:
    return [[f, os.path.getsize(os.path.join(root, f))] for f in files]


def _example(chunk: bytes, relpath: str, offset: int):
    import tensorflow as tf

    feature = {
        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chunk])),
        "file": tf.train.Feature(bytes_list=tf.train.BytesList(value=[relpath.encode("utf-8")])),
        "offset": tf.train.Feature(int64_list=tf.train.Int64List(value=[offset])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def prepare_stdlib(
    data_dir: str,
    root: str | None = None,
    chunk_bytes: int = 1024,
    include_tests: bool = False,
) -> dict[str, str]:
    """Writes the recipe's files if missing; returns split -> TFRecord path.

    Args:
        data_dir: str. `data.data_dir`; files go to `<data_dir>/stdlib/<name>/`.
        root: str or None. The sources read (`stdlib_dir`); None: `default_root()`.
        chunk_bytes: int. Longest chunk, in UTF-8 bytes.
        include_tests: bool. Also read the `test`/`tests`/`idle_test` directories.

    Returns:
        dict mapping "train", "dev", "test" to the TFRecord path.

    Raises:
        DataError: no such directory, no `.py` file, or files built from other sources
            than those on disk now.
    """
    from kerastx import metrics

    root = os.path.realpath(root or default_root())
    if not os.path.isdir(root):
        raise DataError(f"stdlib: {root}: no such directory (data.*.stdlib_dir)")
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise DataError(
            f"stdlib: chunk_bytes must be at least {MIN_CHUNK_BYTES}; got {chunk_bytes}"
        )
    out_dir = recipe_dir(data_dir, root, chunk_bytes, include_tests)
    paths = {s: os.path.join(out_dir, f"{s}.tfrecord") for s in SPLITS}
    manifest = os.path.join(out_dir, "manifest.json")
    files, skipped = python_files(root, include_tests)
    listing = _fingerprint(root, files)
    if all(os.path.exists(p) for p in [*paths.values(), manifest]):
        with open(manifest, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("files_on_disk") != listing:
            raise DataError(
                f"{out_dir}: built from other .py files than {root} holds now (Python was "
                f"upgraded or files changed); delete {out_dir} to rebuild it (runs trained "
                f"on the old files then no longer resume the same data)"
            )
        return paths
    if not files:
        raise DataError(f"stdlib: no .py file under {root} (data.*.stdlib_dir)")
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    counts = {s: {"files": 0, "bytes": 0, "chunks": 0, "lines": 0} for s in SPLITS}
    held_out: dict[str, list[str]] = {"dev": [], "test": []}
    text: dict[str, list[bytes]] = {"dev": [], "test": []}
    left_out: dict = {"not_utf8": [], "nul_byte": [], "empty_files": 0, "long_lines_cut": 0}
    tmp = {s: f"{p}.tmp-{os.getpid()}" for s, p in paths.items()}
    writers = {s: tf.io.TFRecordWriter(tmp[s]) for s in SPLITS}
    try:
        for relpath in files:
            with open(os.path.join(root, relpath), "rb") as f:
                data = f.read()
            if b"\0" in data:
                left_out["nul_byte"].append(relpath)
                continue
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                left_out["not_utf8"].append(relpath)
                continue
            if not data:
                left_out["empty_files"] += 1
                continue
            split = split_of(relpath)
            chunks, cut = chunk_file(data, chunk_bytes)
            left_out["long_lines_cut"] += cut
            for offset, chunk in chunks:
                writers[split].write(_example(chunk, relpath, offset))
            c = counts[split]
            c["files"] += 1
            c["bytes"] += len(data)
            c["chunks"] += len(chunks)
            c["lines"] += data.count(b"\n") + (not data.endswith(b"\n"))
            if split in held_out:
                held_out[split].append(relpath)
                text[split].append(data)
    finally:
        for writer in writers.values():
            writer.close()
    for split in SPLITS:
        os.replace(tmp[split], paths[split])
    info = {
        "source": f"the .py files under {root}",
        "python": sys.version.split()[0],
        "root": root,
        "include_tests": include_tests,
        "chunk_bytes": chunk_bytes,
        "split": f"sha256(relative path)[:8] % 10000: < {TEST_BELOW} test, "
        f"< {DEV_BELOW} dev, else train",
        "counts": counts,
        "files": held_out,
        "compression_bits_per_byte": {
            s: metrics.compression_bits_per_byte(b"".join(t)) for s, t in text.items() if t
        },
        "left_out": {**left_out, **({} if include_tests else skipped)},
        "files_on_disk": listing,
    }
    write_manifest(manifest, info)
    return paths
