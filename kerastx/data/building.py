"""Building the vocabularies once, from the training data, into the run directory.

Layout of `<run_dir>/vocab/`:

- `source.txt` and `target.txt` (or one `shared.txt` with `data.shared_vocab`);
  SentencePiece models are `source.model` etc.
- `labels.txt` (classifier) and `conditions.txt` (with a `condition_column`): the
  distinct values in the training data, sorted as strings, ids from 0.
- `manifest.json`: the tokenizer settings each file was built with.

A file that exists is used as it is: nothing is rebuilt silently. If the tokenizer
settings changed since it was built (manifest), loading stops with a `DataError` that
says which file to delete. A vocabulary given in the config (`tokenizer.vocab`) is
used directly and never written.

Building: bytes writes its fixed 260 entries (`tokenizers.BYTE_ENTRIES`, nothing
counted); chars, words and symbols keep the most frequent pieces (ties in code-point
order) seen at least `min_frequency` times, up to `vocab_size` entries with the four
special ones. wordpiece runs tensorflow_text's WordPiece learner
(`wordpiece_tokenizer_learner_lib.learn`) on whitespace-split word counts. sentencepiece
trains a unigram model with the `sentencepiece` package (character coverage 1.0,
`vocab_size` a soft limit, seeded with the experiment seed).
"""

from __future__ import annotations

import collections
import io
import json
import os
from collections.abc import Callable

import tensorflow as tf

from kerastx import tasks
from kerastx.data import sources, tokenizers
from kerastx.data import vocab as vocab_lib
from kerastx.data.errors import DataError

_CHUNK = 16384
MANIFEST = "manifest.json"


def count_pieces(texts: list[str], kind: str, lowercase: bool) -> collections.Counter:
    """Counts the pieces the tokenizer of `kind` splits `texts` into (in the TF graph)."""
    counter: collections.Counter = collections.Counter()
    for start in range(0, len(texts), _CHUNK):
        pieces = tokenizers.split_text(tf.constant(texts[start : start + _CHUNK]), kind, lowercase)
        uniq, _, counts = tf.unique_with_counts(pieces.flat_values)
        for piece, count in zip(uniq.numpy(), counts.numpy()):
            counter[piece.decode("utf-8")] += int(count)
    return counter


def _usable(piece: str) -> bool:
    if not piece or "\n" in piece or "\r" in piece:
        return False
    return piece not in vocab_lib.SPECIALS


def frequent_entries(
    counter: collections.Counter, vocab_size: int, min_frequency: int
) -> list[str]:
    """The vocabulary: specials, then the most frequent usable pieces."""
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [p for p, c in ranked if c >= min_frequency and _usable(p)]
    return list(vocab_lib.SPECIALS) + kept[: max(0, vocab_size - len(vocab_lib.SPECIALS))]


def _lowered(texts: list[str], lowercase: bool) -> list[str]:
    if not lowercase:
        return texts
    out = []
    for start in range(0, len(texts), _CHUNK):
        chunk = tf.strings.lower(tf.constant(texts[start : start + _CHUNK]), encoding="utf-8")
        out.extend(s.decode("utf-8") for s in chunk.numpy())
    return out


def _train_sentencepiece(path: str, texts: list[str], tok, seed: int) -> None:
    import sentencepiece as spm

    lines = [t for t in _lowered(texts, tok.lowercase) if t.strip()]
    if not lines:
        raise DataError(f"{path}: cannot train SentencePiece: the training text is empty")
    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buffer,
            vocab_size=tok.vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            hard_vocab_limit=False,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            bos_piece="<s>",
            eos_piece="</s>",
            unk_piece="<unk>",
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        reason = str(err).splitlines()[0] if str(err) else "unknown error"
        raise DataError(f"{path}: SentencePiece training failed ({reason})") from None
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def build_vocab_file(path: str, texts: list[str], tok, seed: int) -> None:
    """Builds one vocabulary (or SentencePiece model) from texts and writes it to `path`.

    Args:
        path: str. Output file.
        texts: list of str. The training text of this side.
        tok: TokenizerConfig.
        seed: int. The experiment seed (SentencePiece sampling).
    """
    if tok.type == "sentencepiece":
        _train_sentencepiece(path, texts, tok, seed)
        return
    if tok.type == "bytes":  # fixed: one entry per byte, whatever the data
        vocab_lib.write_entries(path, list(tokenizers.BYTE_ENTRIES))
        return
    if tok.type == "wordpiece":
        from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as wp

        words = count_pieces(texts, "words", tok.lowercase)
        counts = sorted((w, c) for w, c in words.items() if _usable(w))
        entries = wp.learn(
            counts, tok.vocab_size, list(vocab_lib.SPECIALS), lower_thresh=tok.min_frequency
        )
        entries = [e for e in entries if _usable(e) or e in vocab_lib.SPECIALS]
    else:
        entries = frequent_entries(
            count_pieces(texts, tok.type, tok.lowercase), tok.vocab_size, tok.min_frequency
        )
    vocab_lib.write_entries(path, entries)


def _settings(tok) -> dict:
    return {
        "type": tok.type,
        "vocab_size": tok.vocab_size,
        "min_frequency": tok.min_frequency,
        "lowercase": tok.lowercase,
    }


def _read_manifest(vocab_dir: str) -> dict:
    path = os.path.join(vocab_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable vocabulary manifest ({err})") from None


def _write_manifest(vocab_dir: str, manifest: dict) -> None:
    path = os.path.join(vocab_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def vocab_plan(cfg) -> dict[str, tuple[str, object | None, bool]]:
    """side -> (path, TokenizerConfig or None for tag files, given_by_user)."""
    d, task = cfg.data, tasks.get(cfg.model.type)
    own_target = task.target_vocabulary == "own"
    vocab_dir = os.path.join(cfg.run_dir, "vocab")
    plan: dict[str, tuple[str, object | None, bool]] = {}

    def file_for(side: str, tok) -> tuple[str, object, bool]:
        if tok.vocab:
            return tok.vocab, tok, True
        ext = ".model" if tok.type == "sentencepiece" else ".txt"
        return os.path.join(vocab_dir, side + ext), tok, False

    if own_target and d.shared_vocab:
        if d.source_tokenizer.type != d.target_tokenizer.type:
            raise DataError(
                f"data.shared_vocab needs one tokenizer type for both sides; "
                f"source_tokenizer.type is {d.source_tokenizer.type}, target_tokenizer.type "
                f"is {d.target_tokenizer.type}"
            )
        plan["source"] = plan["target"] = file_for("shared", d.source_tokenizer)
    else:
        plan["source"] = file_for("source", d.source_tokenizer)
        if own_target:
            plan["target"] = file_for("target", d.target_tokenizer)
    if "label" in task.fields:
        plan["labels"] = (os.path.join(vocab_dir, "labels.txt"), None, False)
    tagged = any(c.type in ("tsv", "tfrecord", "gettext") and c.condition_column for c in d.train)
    if tagged and not cfg.model.condition_dim:  # vectors (model.condition_dim) have no tags
        plan["conditions"] = (os.path.join(vocab_dir, "conditions.txt"), None, False)
    return plan


def load_train_corpora(cfg) -> list[sources.RawCorpus]:
    """Reads every training corpus of the experiment."""
    return [
        sources.load_corpus(c, "train", i, tasks.get(cfg.model.type).fields, cfg.data, cfg.seed)
        for i, c in enumerate(cfg.data.train)
    ]


def build_vocabularies(
    cfg,
    load_train: Callable[[], list[sources.RawCorpus]] | None = None,
    note: Callable[[], dict] | None = None,
) -> dict[str, str]:
    """Builds the missing vocabularies of an experiment and checks the existing ones.

    Also prepares recipe files (cmudict), since building reads the training data. Called
    by `kerastx vocab EXP` and on first use by `build_data`.

    Args:
        cfg: ExperimentConfig.
        load_train: callable returning the training corpora (to share one read with the
            caller); defaults to reading them here, only if something must be built.
        note: callable returning a dict, or None. What the files are built from when
            that is not the whole training data (streamed corpora: the sample's size);
            recorded in the manifest under "sample" with the examples read, when
            something is built.

    Returns:
        dict: "source", "target" (seq2seq; the same path with shared_vocab), "labels"
        (classifier), "conditions" (with a condition_column) -> file path.

    Raises:
        DataError: a bad data file, a given vocabulary missing or malformed, or an
            existing vocabulary built with other tokenizer settings.
    """
    plan = vocab_plan(cfg)
    for path, tok, given in plan.values():
        if given:  # a bad given file stops before another side is built and written
            if tok.type == "sentencepiece":
                vocab_lib.check_sentencepiece_file(path)
            else:
                vocab_lib.check_vocab_file(path)
    vocab_dir = os.path.join(cfg.run_dir, "vocab")
    manifest = _read_manifest(vocab_dir)
    corpora = None
    changed = False
    for side, (path, tok, given) in plan.items():
        key = os.path.basename(path)
        if given:
            continue
        if os.path.exists(path):
            recorded = manifest.get(key)
            current = _settings(tok) if tok is not None else None
            if current is not None and recorded is not None and recorded != current:
                keys = [k for k in current if recorded.get(k) != current[k]]
                was = ", ".join(f"{k}={recorded.get(k)!r}" for k in keys)
                now = ", ".join(f"{k}={current[k]!r}" for k in keys)
                section = "target_tokenizer" if side == "target" else "source_tokenizer"
                raise DataError(
                    f"{path}: built with {was}, but data.{section} now has {now}; delete "
                    f"the file to rebuild it or restore the old settings"
                )
            continue
        if corpora is None:
            corpora = load_train() if load_train is not None else load_train_corpora(cfg)
        os.makedirs(vocab_dir, exist_ok=True)
        if side == "labels":
            vocab_lib.write_entries(path, sorted({t for c in corpora for t in c.label}))
        elif side == "conditions":
            tags = {t for c in corpora if c.condition is not None for t in c.condition}
            vocab_lib.write_entries(path, sorted(tags))
        else:
            shared = "target" in plan and plan["target"][0] == plan["source"][0]
            texts: list[str] = []
            for c in corpora:
                if side == "source" or shared:
                    texts.extend(c.source)
                if side == "target" or shared:
                    texts.extend(c.target or [])
            build_vocab_file(path, texts, tok, cfg.seed)
            manifest[key] = _settings(tok)
            changed = True
    if changed:
        if note is not None:
            manifest["sample"] = {**note(), "examples": sum(len(c) for c in corpora)}
        _write_manifest(vocab_dir, manifest)
    return {side: path for side, (path, _, _) in plan.items()}
