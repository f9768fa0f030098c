"""Tokenizing a corpus once, in memory, and applying the length policy.

Lengths are counted as the model sees them: a source is its tokens + EOS, a target (and
a decoder-only LM's text) its tokens + one (BOS in the input, EOS in the output). So an
example is "too long" when `tokens + 1 > max_source_length` (LM text and classifier text
included) or `tokens + 1 > max_target_length`.

Training corpora follow `data.length_policy`: `drop` (removed, counted), `truncate`
(cut to the limit, counted) or `error` (a `DataError` naming the file and line).
Evaluation corpora are never dropped from for length: a too-long source or target is
truncated for the model, counted, and the raw text (`source_text`/`target_text`) stays
whole for metrics.

Empty examples (a side with no token after tokenization: a blank line, an empty TSV
field, spaces under a words tokenizer) follow `data.empty_examples` in every split:
`drop` (removed first, counted as `empty`) or `error` (naming the file and line).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from kerastx.data import conditions
from kerastx.data.errors import DataError
from kerastx.data.sources import RawCorpus, example_id
from kerastx.special_ids import UNK_ID

_CHUNK = 16384


@dataclasses.dataclass
class Ragged:
    """Token ids of N sequences: `values` int32, `splits` int64 `(N + 1,)`."""

    values: np.ndarray
    splits: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.splits)

    def take(self, rows: np.ndarray, limit: int | None = None) -> Ragged:
        """The given rows, each cut to at most `limit` ids."""
        starts = self.splits[:-1][rows]
        lengths = self.lengths[rows]
        if limit is not None:
            lengths = np.minimum(lengths, limit)
        ends = np.cumsum(lengths)
        offsets = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lengths, lengths)
        values = self.values[np.repeat(starts, lengths) + offsets]
        return Ragged(values.astype(np.int32), np.concatenate([[0], ends]).astype(np.int64))

    def to_tf(self) -> tf.RaggedTensor:
        return tf.RaggedTensor.from_row_splits(self.values, self.splits, validate=False)


def tokenize_all(tokenizer, texts: list[str]) -> Ragged:
    """Runs a tokenizer over many strings in chunks."""
    values, lengths = [np.zeros([0], np.int32)], [np.zeros([0], np.int64)]
    for start in range(0, len(texts), _CHUNK):
        ids = tokenizer.tokenize(tf.constant(texts[start : start + _CHUNK], dtype=tf.string))
        values.append(ids.flat_values.numpy())
        lengths.append(ids.row_lengths().numpy())
    lengths_all = np.concatenate(lengths)
    splits = np.concatenate([[0], np.cumsum(lengths_all)]).astype(np.int64)
    return Ragged(np.concatenate(values).astype(np.int32), splits)


@dataclasses.dataclass
class Encoded:
    """A corpus as token ids after the length policy.

    Attributes:
        name: str. The corpus name.
        source: Ragged. Source (or LM text) tokens, without specials.
        target: Ragged or None. Target tokens, without specials.
        label: int32 array or None.
        condition: int32 tag ids `(N,)`, float32 vectors `(N, condition_dim)`, or None.
        example_id: int64 array.
        rows: int64 array. Position of each kept example in the raw corpus.
        counts: dict. examples, kept, dropped (too long), empty (dropped as empty),
            truncated, replaced (lines with replaced UTF-8), and per side tokens and unk
            (over all examples read).
        weight: float. Sampling weight.
    """

    name: str
    source: Ragged
    target: Ragged | None
    label: np.ndarray | None
    condition: np.ndarray | None
    example_id: np.ndarray
    rows: np.ndarray
    counts: dict
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.example_id)

    def model_lengths(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Per example, the source and target lengths as the model sees them (+1 each)."""
        src = self.source.lengths + 1
        tgt = self.target.lengths + 1 if self.target is not None else None
        return src, tgt


def _tag_ids(values: list[str], tags: list[str], path: str, where, what: str) -> np.ndarray:
    index = {t: i for i, t in enumerate(tags)}
    out = np.empty(len(values), np.int32)
    for i, value in enumerate(values):
        if value not in index:
            raise DataError(f"{where(i)}: {what} {value!r} is not in {path}")
        out[i] = index[value]
    return out


def _check_empty(raw: RawCorpus, source: Ragged, target: Ragged | None, policy: str):
    """The examples with an empty side; raises under `data.empty_examples: error`."""
    src_empty = source.lengths == 0
    tgt_empty = target.lengths == 0 if target is not None else np.zeros(len(src_empty), bool)
    empty = src_empty | tgt_empty
    if policy == "error" and empty.any():
        i = int(np.argmax(empty))
        side, where = ("source", raw.where) if src_empty[i] else ("target", None)
        where = where or raw.target_where or raw.where
        raise DataError(
            f"{where(i)}: {side} is empty (a blank line or no token after tokenization); "
            f"fix the line or set data.empty_examples: drop"
        )
    return empty


def encode_corpus(
    raw: RawCorpus,
    corpus_index: int,
    module,
    limits: tuple[int, int],
    policy: str,
    empty_policy: str = "drop",
    condition_column: str | None = None,
) -> Encoded:
    """Tokenizes a corpus, drops empty examples and applies the length policy.

    Args:
        raw: RawCorpus.
        corpus_index: int. Its position in data.train (0 for dev/test); goes into ids.
        module: object with `source_tokenizer`, `target_tokenizer`, `labels`, `conditions`
            (and `condition_dim`: > 0 reads the conditions as vectors, see
            `kerastx.data.conditions`).
        limits: (max_source_length, max_target_length) in model lengths.
        policy: str. "drop", "truncate", "error", or "eval" (truncate, never drop).
        empty_policy: str. `data.empty_examples`: "drop" or "error".
        condition_column: str or None. Named in the message of a bad condition vector.

    Returns:
        An `Encoded`.
    """
    source = tokenize_all(module.source_tokenizer, raw.source)
    target = None
    if raw.target is not None:
        target = tokenize_all(module.target_tokenizer, raw.target)
    n = len(raw.source)
    empty = _check_empty(raw, source, target, empty_policy)
    max_src, max_tgt = limits
    src_over = (source.lengths + 1 > max_src) & ~empty
    tgt_over = (target.lengths + 1 > max_tgt) & ~empty if target is not None else np.zeros(n, bool)
    over = src_over | tgt_over
    if policy == "error" and over.any():
        i = int(np.argmax(over))
        if src_over[i]:
            raise DataError(
                f"{raw.where(i)}: source is {source.lengths[i] + 1} tokens with EOS, over "
                f"data.max_source_length={max_src} (data.length_policy: error)"
            )
        where = raw.target_where or raw.where
        raise DataError(
            f"{where(i)}: target is {target.lengths[i] + 1} tokens with BOS/EOS, over "
            f"data.max_target_length={max_tgt} (data.length_policy: error)"
        )
    rows = np.flatnonzero(~empty & ~over) if policy == "drop" else np.flatnonzero(~empty)
    counts = {
        "examples": n,
        "kept": len(rows),
        "dropped": int(over.sum()) if policy == "drop" else 0,
        "empty": int(empty.sum()),
        "truncated": int(over.sum()) if policy in ("truncate", "eval") else 0,
        "replaced": raw.replaced,
        "source_tokens": int(source.lengths.sum()),
        "source_unk": int((source.values == UNK_ID).sum()),
    }
    if target is not None:
        counts["target_tokens"] = int(target.lengths.sum())
        counts["target_unk"] = int((target.values == UNK_ID).sum())
    label = condition = None
    if raw.label is not None and module.labels is not None:
        label = _tag_ids(raw.label, module.labels.tags, module.labels.path, raw.where, "label")[
            rows
        ]
    dim = getattr(module, "condition_dim", 0)
    if raw.condition is not None and dim:
        condition = conditions.parse_vectors(raw.condition, dim, raw.where, condition_column)
        condition = condition[rows]
    elif raw.condition is not None and module.conditions is not None:
        condition = _tag_ids(
            raw.condition, module.conditions.tags, module.conditions.path, raw.where, "condition"
        )[rows]
    ids = np.asarray([example_id(corpus_index, 0)], np.int64) + rows.astype(np.int64)
    return Encoded(
        name=raw.name,
        source=source.take(rows, max_src - 1),
        target=target.take(rows, max_tgt - 1) if target is not None else None,
        label=label,
        condition=condition,
        example_id=ids,
        rows=rows.astype(np.int64),
        counts=counts,
        weight=raw.weight,
    )
