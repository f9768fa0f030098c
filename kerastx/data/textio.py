"""Reading data files strictly: every problem is a `DataError` naming the file and line.

Line format: lines end with `\\n`; a trailing `\\r` (Windows line ends) and a UTF-8 byte
order mark at the start of the file are removed. No other character splits lines
(unlike Python's `str.splitlines`, which also splits at U+2028 and friends), so the
line numbers here equal those of `tf.data.TextLineDataset` and of text editors.

Checks, in this order: the file exists, is not empty (0 bytes), is decompressed if it is
gzip (by its first bytes: `.gz` shards read as text), holds no NUL byte, and is valid
UTF-8. Invalid UTF-8 stops with the file, line and column unless the data section
says `invalid_utf8: replace`; then each bad byte sequence becomes U+FFFD and the lines
touched are counted (and reported by `DataModule.report()`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import zlib

from kerastx.data.errors import DataError

_GLOB_CHARS = "*?["


@dataclasses.dataclass
class Lines:
    """The lines of one or more files read in order, with where each one came from.

    Attributes:
        lines: list of str. The decoded lines.
        files: list of (path, first_index, count, first_line): lines
            `first_index .. first_index + count - 1` come from `path`, starting at line
            number `first_line` (1-based; 2 for a TSV file after its header).
        replaced: int. Lines in which invalid UTF-8 was replaced.
    """

    lines: list[str]
    files: list[tuple[str, int, int, int]] = dataclasses.field(default_factory=list)
    replaced: int = 0

    def where(self, i: int) -> str:
        """`file:line` of the i-th line (0-based)."""
        for path, first, count, first_line in self.files:
            if first <= i < first + count:
                return f"{path}:{first_line + i - first}"
        raise IndexError(i)


def expand(pattern: str) -> list[str]:
    """The files a path or glob names, sorted; a plain path is returned as is."""
    if not any(ch in pattern for ch in _GLOB_CHARS):
        return [pattern]
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{pattern}: no file matches this pattern")
    return files


def _line_col(data: bytes, pos: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, pos) + 1
    return data.count(b"\n", 0, pos) + 1, pos - line_start + 1


def read_bytes(path: str) -> bytes:
    """The raw bytes of a data file; missing, unreadable and empty files are errors."""
    return read_bytes_head(path, -1)


GZIP_MAGIC = b"\x1f\x8b"


def read_bytes_head(path: str, count: int = 2) -> bytes:
    """The first `count` bytes of a data file (-1: all of it); missing, unreadable and
    empty files are errors."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a file")
    try:
        with open(path, "rb") as f:
            head = f.read(count)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not head:
        raise DataError(f"{path}: file is empty")
    return head


def decompressed(data: bytes, path: str) -> bytes:
    """The text of a gzip file (known by its first two bytes, whatever its name), else
    `data` as it is. Line numbers in messages are those of the decompressed text.

    Raises:
        DataError: a damaged or cut gzip stream, or one that holds nothing.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err})") from None
    if not text:
        raise DataError(f"{path}: file is empty (a gzip file holding nothing)")
    return text


def decode(data: bytes, path: str, invalid_utf8: str, lines: bool = True) -> tuple[str, int]:
    """Decodes file contents (or a record) as UTF-8 under the `invalid_utf8` policy.

    Args:
        data: bytes. The contents.
        path: str. Named in messages (may carry a record number).
        invalid_utf8: str. "error" or "replace".
        lines: bool. Whether messages name the line (`path:line:`); False for a record,
            whose `path` already says where it is.

    Returns:
        `(text, lines_with_replacements)`.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        line, col = _line_col(data, nul)
        where = f"{path}:{line}" if lines else path
        raise DataError(f"{where}: NUL byte at column {col}; is this a binary file?")
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if invalid_utf8 != "replace":
            line, col = _line_col(data, err.start)
            where = f"{path}:{line}" if lines else path
            raise DataError(
                f"{where}: invalid UTF-8 (byte 0x{data[err.start]:02x} at column {col}); fix "
                f"the file or set data.invalid_utf8: replace"
            ) from None
    replaced = 0
    for raw in data.split(b"\n"):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            replaced += 1
    return data.decode("utf-8", errors="replace"), replaced


def split_lines(text: str) -> list[str]:
    """Splits at `\\n` only, dropping a final empty line, a BOM and trailing `\\r`s."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_file(path: str, invalid_utf8: str = "error") -> tuple[list[str], int]:
    """Reads one file's lines.

    Args:
        path: str. The file.
        invalid_utf8: str. "error" (default) or "replace".

    Returns:
        `(lines, lines_with_replacements)`.

    Raises:
        DataError: the file is missing, empty, binary (NUL byte) or invalid UTF-8.
    """
    text, replaced = decode(decompressed(read_bytes(path), path), path, invalid_utf8)
    lines = split_lines(text)
    if not lines:
        raise DataError(f"{path}: file is empty")
    return lines, replaced


def read_lines(pattern: str, invalid_utf8: str = "error") -> Lines:
    """Reads the lines of a file, or of the sorted files of a glob, in order.

    Args:
        pattern: str. A path or a glob.
        invalid_utf8: str. "error" (default) or "replace".

    Returns:
        A `Lines`.

    Raises:
        DataError: a file is missing, empty, binary (NUL byte) or invalid UTF-8.
    """
    out = Lines(lines=[])
    for path in expand(pattern):
        lines, replaced = read_file(path, invalid_utf8)
        out.files.append((path, len(out.lines), len(lines), 1))
        out.lines.extend(lines)
        out.replaced += replaced
    return out
