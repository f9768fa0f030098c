"""Vocabulary files: the format, the fixed special ids, and the checks on loading.

A vocabulary file (chars, words, symbols, wordpiece) holds one entry a line, in UTF-8;
the line number minus one is the id. Lines 1-4 are always `<pad>`, `<s>`, `</s>`,
`<unk>` (ids PAD=0, BOS=1, EOS=2, UNK=3). A SentencePiece model must be trained with
`pad_id=0 bos_id=1 eos_id=2 unk_id=3`. Label and condition files (`labels.txt`,
`conditions.txt`) hold one tag a line, ids from 0, no special entries.
"""

from __future__ import annotations

import os

from kerastx.data.errors import DataError
from kerastx.special_ids import SPECIAL_NAMES as _SPECIAL_NAMES
from kerastx.special_ids import SPECIAL_TOKENS as SPECIALS


def check_path(path: str, what: str) -> None:
    """Refuses a path that is not a file: missing, or a directory.

    Args:
        path: str. The file.
        what: str. What it should be, e.g. "vocabulary file".
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a {what}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")


def read_entries(path: str, what: str = "vocabulary") -> list[str]:
    """The lines of a vocabulary or tag file (trailing `\\r` removed, as TensorFlow does)."""
    check_path(path, f"{what} file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read the {what} file ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: {what} file is not valid UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{path}: {what} file is empty")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_unique(path: str, entries: list[str], what: str) -> None:
    first: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if entry == "":
            raise DataError(f"{path}:{number}: empty {what} entry")
        if entry in first:
            raise DataError(
                f"{path}:{number}: duplicate {what} entry {entry!r} (first on line {first[entry]})"
            )
        first[entry] = number


def check_vocab_file(path: str) -> int:
    """Checks a vocabulary file and returns its size.

    Raises:
        DataError: missing file, empty file, special entries not on lines 1-4 (e.g. no
            UNK), empty or duplicate entries.
    """
    entries = read_entries(path)
    for i, special in enumerate(SPECIALS):
        found = entries[i] if i < len(entries) else None
        if found != special:
            shown = repr(found) if found is not None else "end of file"
            raise DataError(
                f"{path}:{i + 1}: vocabulary has no {_SPECIAL_NAMES[i]}: line {i + 1} must be "
                f"'{special}' (lines 1-4 hold <pad> <s> </s> <unk>, ids 0-3); found {shown}"
            )
    _check_unique(path, entries, "vocabulary")
    return len(entries)


def check_sentencepiece_file(path: str) -> int:
    """Checks a SentencePiece model's special ids and returns its vocabulary size."""
    import sentencepiece as spm

    check_path(path, "SentencePiece model file")
    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a SentencePiece model ({reason})") from None
    ids = (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id())
    for i, name in enumerate(_SPECIAL_NAMES):
        if ids[i] != i:
            raise DataError(
                f"{path}: SentencePiece model has no {name} at id {i} ({name.lower()}_id="
                f"{ids[i]}); train it with pad_id=0 bos_id=1 eos_id=2 unk_id=3"
            )
    return sp.get_piece_size()


def read_tag_file(path: str) -> list[str]:
    """The tags of a label or condition file, in id order."""
    tags = read_entries(path, "tag")
    _check_unique(path, tags, "tag")
    return tags


def write_entries(path: str, entries: list[str]) -> None:
    """Writes one entry a line, atomically (a temporary file renamed into place)."""
    for entry in entries:
        if "\n" in entry or "\r" in entry or entry == "":
            raise ValueError(f"cannot write vocabulary entry {entry!r}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(entry + "\n" for entry in entries))
    os.replace(tmp, path)
