"""The software-catalogue recipe: gettext message catalogues as translation and language data.

Source: the compiled catalogues installed on the machine (`<locale_dir>/<language>/
LC_MESSAGES/*.mo`, default `/usr/share/locale`), read with Python's `gettext` module;
nothing is downloaded. A catalogue maps an English message (its msgid) to its translation.
What the recipe does, in order:

1. Reads every catalogue of each language in `languages` (sorted by file name). A
   catalogue Python cannot read (a wrong charset header, a corrupt file) is left out and
   listed in the manifest with the reason, and in the log line.
2. Keeps singular messages and the first form of plural ones; leaves out the header entry,
   untranslated entries (empty msgstr) and messages with a tab or a line break in either
   language (a TSV row holds one line; such messages are mostly long help texts). Every
   left-out entry is counted in the manifest under its reason.
3. Deduplicates per (English message, language): a message translated by several
   catalogues keeps its most frequent translation (ties: the alphabetically first), and
   the others are counted as `conflicting_translations`.
4. Splits by English message: `sha256(msgid)`, first 8 bytes big-endian, modulo 10,000;
   below 300 -> test, 300-499 -> dev, the rest -> train. All translations of one message
   stay in one split, in every process and on every machine.
5. Writes `<data_dir>/gettext/<name>/{train,dev,test}.tsv`, sorted by (message, language),
   and `manifest.json` with the catalogues read, the counts and the split rule:
   - `records: pairs` (translation): columns `source` (English), `target` (the
     translation), `language` (its catalogue language: the condition of a multilingual
     model, `condition_column: language`), `language_vector` (the same as a one-hot
     vector over the sorted languages, numbers separated by spaces: a vector condition,
     `condition_column: language_vector` with `model.condition_dim` = the number of
     languages) and `catalogue` (the .mo file name).
   - `records: strings` (language identification): one row per distinct UI string:
     `source` (the string) and `label` (its language; `en` is the msgids themselves).
     A string found in more than one language ("OK", "%s") cannot be identified from its
     text and is left out (counted as `ambiguous_strings`).

The files are written once; a later call checks that the catalogues on disk are still
the ones the manifest lists (a package upgrade changes them) and stops with an error
naming the directory otherwise, so a run never trains on data that changed under it.
The figures of a recipe therefore depend on the installed packages: the manifest lists
them.
"""

from __future__ import annotations

import collections
import gettext
import glob
import hashlib
import json
import os

from kerastx.data.errors import DataError
from kerastx.data.recipe_files import write_lines, write_manifest

SPLITS = ("train", "dev", "test")
TEST_BELOW = 300
DEV_BELOW = 500
RECORDS = ("pairs", "strings")
# The layout of the files written; a directory written by another version is refused.
VERSION = 2
SOURCE_LANGUAGE = "en"


def split_of(message: str) -> str:
    """The split of an English message: "train", "dev" or "test" (stable everywhere)."""
    bucket = int.from_bytes(hashlib.sha256(message.encode("utf-8")).digest()[:8], "big") % 10000
    if bucket < TEST_BELOW:
        return "test"
    return "dev" if bucket < DEV_BELOW else "train"


def recipe_dir(data_dir: str, languages, records: str) -> str:
    """`<data_dir>/gettext/<name>`: `en-fr`, `en-es+fr+it+pt`, `langid-de+en+...`."""
    names = "+".join(sorted(languages))
    name = f"langid-{names}" if records == "strings" else f"{SOURCE_LANGUAGE}-{names}"
    return os.path.join(data_dir, "gettext", name)


def catalogues(locale_dir: str, language: str) -> list[str]:
    """The `.mo` files of one language, sorted."""
    return sorted(glob.glob(os.path.join(locale_dir, language, "LC_MESSAGES", "*.mo")))


def _fingerprint(paths: list[str]) -> list[list]:
    return [[p, os.path.getsize(p)] for p in paths]


def _read_catalogue(path: str, stats: collections.Counter) -> list[tuple[str, str]] | str:
    """(msgid, msgstr) pairs of one catalogue, or the reason it cannot be read."""
    try:
        with open(path, "rb") as f:
            catalogue = gettext.GNUTranslations(f)
    except (OSError, UnicodeDecodeError, ValueError, LookupError) as e:
        return f"{type(e).__name__}: {e}"
    out = []
    # `_catalog` is the parsed table of GNUTranslations (documented in its source since
    # Python 2; no public accessor lists the entries).
    for key, value in sorted(catalogue._catalog.items(), key=lambda kv: str(kv[0])):
        if isinstance(key, tuple):  # (msgid, n) of a plural form: keep form 0 only
            if key[1] != 0:
                continue
            key = key[0]
        if not key:  # the header entry
            continue
        key = key.split("\x00")[0]  # msgid\0msgid_plural of plural entries
        if "\x04" in key:  # msgctxt\x04msgid: the context is not part of the text
            key = key.split("\x04", 1)[1]
        if not value:
            stats["untranslated"] += 1
            continue
        if any(c in key or c in value for c in "\t\n\r"):
            stats["multi_line_or_tab"] += 1
            continue
        out.append((key, value))
    return out


def _collect(locale_dir: str, languages) -> tuple[dict, dict, dict]:
    """{(msgid, language): Counter(translation)}, catalogue listing, counts."""
    found: dict[tuple[str, str], collections.Counter] = {}
    origin: dict[tuple[str, str, str], str] = {}
    read, skipped = {}, []
    stats: collections.Counter = collections.Counter()
    for language in languages:
        paths = catalogues(locale_dir, language)
        if not paths:
            raise DataError(
                f"gettext: no catalogues for language '{language}' in "
                f"{os.path.join(locale_dir, language, 'LC_MESSAGES')} (data.*.languages); "
                f"installed languages: {', '.join(_installed(locale_dir)[:40]) or 'none'}"
            )
        read[language] = []
        for path in paths:
            entries = _read_catalogue(path, stats)
            if isinstance(entries, str):
                skipped.append({"path": path, "why": entries})
                continue
            read[language].append(path)
            for msgid, msgstr in entries:
                stats["entries"] += 1
                found.setdefault((msgid, language), collections.Counter())[msgstr] += 1
                origin.setdefault((msgid, language, msgstr), os.path.basename(path))
    return found, {"read": read, "skipped": skipped, "origin": origin}, stats


def _installed(locale_dir: str) -> list[str]:
    return (
        sorted(
            d for d in os.listdir(locale_dir) if glob.glob(os.path.join(locale_dir, d, "*", "*.mo"))
        )
        if os.path.isdir(locale_dir)
        else []
    )


def _rows(found, origin, records, stats) -> dict[str, list[list[str]]]:
    rows: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    chosen = {}
    for (msgid, language), counts in found.items():
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        stats["conflicting_translations"] += len(counts) - 1
        chosen[(msgid, language)] = best
    if records == "pairs":
        languages = sorted({language for _, language in chosen})
        one_hot = {
            lang: " ".join("1" if lang == other else "0" for other in languages)
            for lang in languages
        }
        for (msgid, language), text in sorted(chosen.items()):
            where = origin[(msgid, language, text)]
            rows[split_of(msgid)].append([msgid, text, language, one_hot[language], where])
        return rows
    # strings: one row per distinct text; English = the msgids of the catalogues read.
    languages_of: dict[str, set[str]] = collections.defaultdict(set)
    message_of: dict[str, str] = {}
    for (msgid, language), text in chosen.items():
        for lang, string in ((language, text), (SOURCE_LANGUAGE, msgid)):
            languages_of[string].add(lang)
            # The split follows the English message, so a string and its translations
            # fall in one split; a string of several messages takes the smallest.
            message_of[string] = min(message_of.get(string, msgid), msgid)
    for string, langs in sorted(languages_of.items()):
        if len(langs) > 1:
            stats["ambiguous_strings"] += 1
            continue
        rows[split_of(message_of[string])].append([string, next(iter(langs))])
    return rows


def prepare_gettext(
    data_dir: str, languages, locale_dir: str = "/usr/share/locale", records: str = "pairs"
) -> dict[str, str]:
    """Writes the recipe's files if missing; returns split -> TSV path.

    Args:
        data_dir: str. `data.data_dir`; files go to `<data_dir>/gettext/<name>/`.
        languages: list of str. Catalogue languages (`fr`, `pt_BR`, ...); with
            `records: strings` also `en` (the English messages).
        locale_dir: str. Where the compiled catalogues are.
        records: str. "pairs" (translation) or "strings" (language identification).

    Returns:
        dict mapping "train", "dev", "test" to the TSV path.

    Raises:
        DataError: no catalogue for a language, no usable entry, or files built from
            other catalogues than those on disk now.
    """
    if records not in RECORDS:
        raise DataError(f"gettext: records must be one of {', '.join(RECORDS)}; got {records!r}")
    languages = sorted(set(languages))
    if records == "pairs" and SOURCE_LANGUAGE in languages:
        raise DataError(
            "gettext: languages: 'en' is the source side of every pair; name target "
            "languages only (en is a language of its own only with records: strings)"
        )
    catalogue_languages = [lang for lang in languages if lang != SOURCE_LANGUAGE]
    if not catalogue_languages:
        raise DataError("gettext: languages: name at least one catalogue language (fr, de, ...)")
    out_dir = recipe_dir(data_dir, languages, records)
    paths = {s: os.path.join(out_dir, f"{s}.tsv") for s in SPLITS}
    manifest = os.path.join(out_dir, "manifest.json")
    listing = {lang: _fingerprint(catalogues(locale_dir, lang)) for lang in catalogue_languages}
    if all(os.path.exists(p) for p in [*paths.values(), manifest]):
        with open(manifest, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("version") != VERSION:
            raise DataError(
                f"{out_dir}: written by another version of the gettext recipe (layout "
                f"{info.get('version', 1)}, this kerastx writes {VERSION}); delete {out_dir} "
                f"to rebuild it"
            )
        if info.get("catalogues_on_disk") != listing:
            raise DataError(
                f"{out_dir}: built from other gettext catalogues than {locale_dir} holds now "
                f"(a package was installed, removed or upgraded); delete {out_dir} to "
                f"rebuild it (runs trained on the old files then no longer resume the same data)"
            )
        return paths
    found, listed, stats = _collect(locale_dir, catalogue_languages)
    if not found:
        raise DataError(f"gettext: no usable entry in the catalogues of {', '.join(languages)}")
    rows = _rows(found, listed["origin"], records, stats)
    os.makedirs(out_dir, exist_ok=True)
    header = ["source", "label"]
    if records == "pairs":
        header = ["source", "target", "language", "language_vector", "catalogue"]
    counts = {}
    for split, split_rows in rows.items():
        write_lines(paths[split], ["\t".join(header)] + ["\t".join(r) for r in split_rows])
        per_language = collections.Counter(r[2] if records == "pairs" else r[1] for r in split_rows)
        counts[split] = {
            "rows": len(split_rows),
            "per_language": dict(sorted(per_language.items())),
        }
    info = {
        "source": f"gettext catalogues in {locale_dir}",
        "version": VERSION,
        "records": records,
        "languages": languages,
        "split": f"sha256(English message)[:8] % 10000: < {TEST_BELOW} test, "
        f"< {DEV_BELOW} dev, else train",
        "counts": counts,
        "left_out": {
            "untranslated": stats["untranslated"],
            "multi_line_or_tab": stats["multi_line_or_tab"],
            "conflicting_translations": stats["conflicting_translations"],
            "ambiguous_strings": stats["ambiguous_strings"],
            "catalogues_unreadable": listed["skipped"],
        },
        "entries_read": stats["entries"],
        "catalogues_read": {lang: len(p) for lang, p in listed["read"].items()},
        "catalogues_on_disk": listing,
    }
    write_manifest(manifest, info)
    return paths


def write_mo(path: str, messages: dict[str, str], charset: str = "UTF-8") -> None:
    """Writes a compiled catalogue (the GNU .mo format) of `messages`: for tests and demos.

    Python ships a reader (`gettext`) but no writer outside its source tree's Tools/;
    the format is four tables of (length, offset) pairs and the strings, so it is
    written here rather than depending on the gettext Debian package's `msgfmt`.
    """
    import struct

    entries = {"": f"Content-Type: text/plain; charset={charset}\n", **messages}
    keys = sorted(entries)
    ids = [k.encode(charset) for k in keys]
    strs = [entries[k].encode(charset) for k in keys]
    count = len(keys)
    ids_start = 7 * 4
    strs_start = ids_start + count * 8
    data_start = strs_start + count * 8
    table_ids, table_strs, blob = [], [], b""
    for raw in ids:
        table_ids.append((len(raw), data_start + len(blob)))
        blob += raw + b"\0"
    for raw in strs:
        table_strs.append((len(raw), data_start + len(blob)))
        blob += raw + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, count, ids_start, strs_start, 0, data_start)
    body = b"".join(struct.pack("<2I", *t) for t in table_ids + table_strs)
    with open(path, "wb") as f:
        f.write(header + body + blob)
