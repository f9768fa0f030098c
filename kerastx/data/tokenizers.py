"""Tokenizers that run inside the TensorFlow graph and travel inside a SavedModel.

Every tokenizer is a `tf.Module`:

- `tokenize(strings (B,) tf.string) -> tf.RaggedTensor (B, None) int32`, without BOS/EOS.
- `detokenize(ids)`: ids `(B, T)` int32 or ragged; each row stops at the first EOS or PAD
  and BOS ids are skipped; returns `(B,)` strings. chars: joined; words and symbols:
  joined by single spaces; wordpiece: `##` pieces glued to the previous piece, words
  joined by spaces; sentencepiece: its own detokenization.
- `vocab_size` (Python int); ids 0..3 are PAD, BOS, EOS, UNK in every vocabulary.

The lookup tables are initialized from the vocabulary file (`tf.lookup.TextFileInitializer`),
so `tf.saved_model.save` copies the file into the SavedModel's `assets/` and the loaded
graph tokenizes raw strings without Python. The SentencePiece model travels as a
constant of the graph (and, for the record, as an asset).

Splitting: `bytes` into UTF-8 bytes (`ByteTokenizer`: fixed ids, lossless);
`chars` splits into Unicode code points (invalid UTF-8 becomes U+FFFD);
`words`, `symbols` and `wordpiece` split at ASCII whitespace (`tf.strings.split`), so
round trips hold for text with single spaces. A `\\r` never enters a vocabulary file
(it would end the line); it tokenizes to UNK. `lowercase` lowers with
`tf.strings.lower(encoding="utf-8")` before splitting, also when vocabularies are built.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_text as tft

from kerastx.data import vocab as vocab_lib
from kerastx.special_ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from kerastx.tfutil import expected_retracing

PAD, BOS, EOS, UNK = PAD_ID, BOS_ID, EOS_ID, UNK_ID
_STRINGS = tf.TensorSpec([None], tf.string)
_DENSE_IDS = tf.TensorSpec([None, None], tf.int32)
_RAGGED_IDS = tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1)


def split_text(strings, kind: str, lowercase: bool):
    """Splits strings into the pieces a vocabulary lists (chars, words, symbols, wordpiece).

    Args:
        strings: `(B,)` tf.string.
        kind: str. Tokenizer type.
        lowercase: bool.

    Returns:
        tf.RaggedTensor `(B, None)` of tf.string.
    """
    if lowercase:
        strings = tf.strings.lower(strings, encoding="utf-8")
    if kind == "chars":
        return tf.strings.unicode_split(strings, "UTF-8", errors="replace")
    return tf.strings.split(strings)


def trim(ids: tf.RaggedTensor) -> tf.RaggedTensor:
    """Cuts each row at its first EOS or PAD and removes BOS ids."""
    dense = ids.to_tensor(default_value=PAD)
    stop = tf.logical_or(tf.equal(dense, EOS), tf.equal(dense, PAD))
    keep = tf.equal(tf.cumsum(tf.cast(stop, tf.int32), axis=1), 0)
    lengths = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    rows = tf.RaggedTensor.from_tensor(dense, lengths=lengths)
    return tf.ragged.boolean_mask(rows, tf.not_equal(rows, BOS))


def _function(method, spec):
    def call(x):
        return method(x)

    call.__doc__ = method.__doc__
    return expected_retracing(tf.function(call, input_signature=[spec]))


class Tokenizer(tf.Module):
    """Base class: the public methods; subclasses give `_tokenize` and `_detokenize`.

    `tokenize`, `detokenize_dense` and `detokenize_ragged` are `tf.function`s with fixed
    input signatures, saved with the module; `detokenize` picks one of the last two.

    Args:
        kind: str. The tokenizer type (chars, words, symbols, wordpiece, sentencepiece).
        path: str. The vocabulary or model file.
        size: int. Number of ids.
        lowercase: bool. Lowercase text before tokenizing.
    """

    def __init__(self, kind: str, path: str, size: int, lowercase: bool, name: str | None):
        super().__init__(name=name)
        self.kind = kind
        self.path = path
        self.lowercase = lowercase
        self._size = size
        # One tf.function per instance, over a fresh closure: TensorFlow counts traces per
        # Python function, and would warn of "retracing" when many tokenizers exist.
        self.tokenize = _function(self._tokenize_strings, _STRINGS)
        self.detokenize_dense = _function(self._detokenize_dense, _DENSE_IDS)
        self.detokenize_ragged = _function(self._detokenize_ragged, _RAGGED_IDS)

    @property
    def vocab_size(self) -> int:
        """Number of ids, PAD..UNK included."""
        return self._size

    def _tokenize_strings(self, strings):
        """`(B,)` strings -> ragged `(B, None)` int32 ids, without BOS/EOS."""
        if self.lowercase:
            strings = tf.strings.lower(strings, encoding="utf-8")
        return tf.cast(self._tokenize(strings), tf.int32)

    def _detokenize_dense(self, ids):
        """`(B, T)` int32 ids -> `(B,)` strings, each row stopping at EOS/PAD."""
        return self._detokenize(trim(tf.RaggedTensor.from_tensor(ids)))

    def _detokenize_ragged(self, ids):
        """Ragged `(B, None)` int32 ids -> `(B,)` strings, each row stopping at EOS/PAD."""
        return self._detokenize(trim(ids))

    def detokenize(self, ids):
        """`(B, T)` or ragged int ids -> `(B,)` strings; see the module docstring."""
        if isinstance(ids, tf.RaggedTensor):
            return self.detokenize_ragged(tf.cast(ids, tf.int32))
        return self.detokenize_dense(tf.cast(ids, tf.int32))

    def _tokenize(self, strings):  # pragma: no cover - abstract
        raise NotImplementedError

    def _detokenize(self, ids):  # pragma: no cover - abstract
        raise NotImplementedError


def _tables(path: str):
    to_id = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            path,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=UNK,
    )
    to_token = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            path,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value=vocab_lib.SPECIALS[UNK],
    )
    return to_id, to_token


class VocabTokenizer(Tokenizer):
    """chars, words or symbols: split, then look each piece up in the vocabulary file.

    Args:
        kind: str. "chars", "words" or "symbols".
        path: str. Vocabulary file, one entry a line, lines 1-4 `<pad> <s> </s> <unk>`.
        lowercase: bool. Defaults to False.
    """

    def __init__(self, kind: str, path: str, lowercase: bool = False, name: str | None = None):
        size = vocab_lib.check_vocab_file(path)
        super().__init__(kind, path, size, lowercase, name)
        self._to_id, self._to_token = _tables(path)
        self._separator = "" if kind == "chars" else " "

    def _tokenize(self, strings):
        return self._to_id.lookup(split_text(strings, self.kind, False))

    def _detokenize(self, ids):
        tokens = self._to_token.lookup(tf.cast(ids, tf.int64))
        return tf.strings.reduce_join(tokens, axis=-1, separator=self._separator)


class WordPieceTokenizer(Tokenizer):
    """WordPiece over whitespace-split words (`tensorflow_text.WordpieceTokenizer`).

    A word that cannot be split into vocabulary pieces becomes one UNK. Suffix pieces
    start with `##`.

    Args:
        path: str. Vocabulary file (lines 1-4 the special tokens).
        lowercase: bool. Defaults to False.
    """

    def __init__(self, path: str, lowercase: bool = False, name: str | None = None):
        size = vocab_lib.check_vocab_file(path)
        super().__init__("wordpiece", path, size, lowercase, name)
        self._to_id, self._to_token = _tables(path)
        self._wordpiece = tft.WordpieceTokenizer(
            self._to_id,
            suffix_indicator="##",
            max_bytes_per_word=200,
            token_out_type=tf.int64,
            unknown_token=vocab_lib.SPECIALS[UNK],
        )

    def _tokenize(self, strings):
        words = tf.strings.split(strings)
        return self._wordpiece.tokenize(words).merge_dims(-2, -1)

    def _detokenize(self, ids):
        tokens = self._to_token.lookup(tf.cast(ids, tf.int64))

        def glue(flat):
            suffix = tf.strings.regex_full_match(flat, "##.+")
            glued = tf.strings.regex_replace(flat, "^##", "")
            return tf.where(suffix, glued, tf.strings.join([" ", flat]))

        joined = tf.strings.reduce_join(tf.ragged.map_flat_values(glue, tokens), axis=-1)
        return tf.strings.regex_replace(joined, "^ ", "")


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model run by `tensorflow_text.SentencepieceTokenizer`.

    Args:
        path: str. The `.model` file, trained with pad_id=0 bos_id=1 eos_id=2 unk_id=3.
        lowercase: bool. Defaults to False.
    """

    def __init__(self, path: str, lowercase: bool = False, name: str | None = None):
        size = vocab_lib.check_sentencepiece_file(path)
        super().__init__("sentencepiece", path, size, lowercase, name)
        with open(path, "rb") as f:
            self._model = f.read()
        self._model_file = tf.saved_model.Asset(path)

    def _processor(self):
        # The SentencePiece resource is created inside the graph that uses it (these
        # methods only run inside the tf.functions of `Tokenizer`), not once eagerly:
        # an eager resource belongs to its op kernel, and `tf.random.set_seed` (run by
        # `keras.utils.set_random_seed` when training starts) clears the eager kernel
        # cache, deleting it ("Resource .../SentencepieceOp... does not exist").
        return tft.SentencepieceTokenizer(model=self._model, out_type=tf.int32)

    def _tokenize(self, strings):
        return self._processor().tokenize(strings)

    def _detokenize(self, ids):
        return self._processor().detokenize(ids)


# The vocabulary file of the `bytes` tokenizer: the special lines, then one line per byte.
BYTE_ENTRIES = tuple(vocab_lib.SPECIALS) + tuple(f"<0x{b:02X}>" for b in range(256))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: the id of byte `b` is `b + 4` (260 ids); lossless, never UNK.

    Any text round-trips, newlines, tabs and `\\r` included. The vocabulary file
    (`BYTE_ENTRIES`: `<pad> <s> </s> <unk>`, then `<0x00>` .. `<0xFF>`) is written
    without reading the data and only names the ids (token labels, `kerastx vocab`);
    tokenizing needs no table. Detokenizing joins the bytes and replaces each invalid
    UTF-8 sequence (a sampled output ending inside a character) by U+FFFD; an UNK id
    (never produced by tokenizing) becomes `<unk>`.

    Args:
        path: str. The vocabulary file; must hold exactly `BYTE_ENTRIES`.
        lowercase: bool. Defaults to False.
    """

    def __init__(self, path: str, lowercase: bool = False, name: str | None = None):
        from kerastx.data.errors import DataError

        if tuple(vocab_lib.read_entries(path)) != BYTE_ENTRIES:
            raise DataError(
                f"{path}: not a bytes vocabulary (it must hold <pad> <s> </s> <unk>, then "
                f"<0x00> .. <0xFF>, one a line); delete it to have it written again"
            )
        super().__init__("bytes", path, len(BYTE_ENTRIES), lowercase, name)
        self._byte_strings = tf.constant([bytes([b]) for b in range(256)])

    def _tokenize(self, strings):
        pieces = tf.strings.bytes_split(strings)  # (B, None) one-byte strings
        values = tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1])
        return pieces.with_flat_values(tf.cast(values, tf.int64) + 4)

    def _detokenize(self, ids):
        flat = tf.cast(ids.flat_values, tf.int32)
        pieces = tf.where(
            flat >= 4,
            tf.gather(self._byte_strings, tf.clip_by_value(flat - 4, 0, 255)),
            tf.constant(vocab_lib.SPECIALS[UNK]),
        )
        joined = tf.strings.reduce_join(ids.with_flat_values(pieces), axis=-1)
        return tf.strings.unicode_transcode(joined, "UTF-8", "UTF-8", errors="replace")


def make_tokenizer(kind: str, path: str, lowercase: bool = False, name: str | None = None):
    """The tokenizer of a type over a vocabulary (or SentencePiece model) file."""
    if kind == "bytes":
        return ByteTokenizer(path, lowercase, name=name)
    if kind == "wordpiece":
        return WordPieceTokenizer(path, lowercase, name=name)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path, lowercase, name=name)
    return VocabTokenizer(kind, path, lowercase, name=name)


class TagVocabulary(tf.Module):
    """A small closed vocabulary of class labels or condition tags, ids 0..N-1.

    Args:
        path: str. One tag a line.

    Attributes:
        tags: list of str. The tags in id order.
    """

    def __init__(self, path: str, name: str | None = None):
        super().__init__(name=name)
        self.path = path
        self.tags = vocab_lib.read_tag_file(path)
        self._to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                path,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        self._to_tag = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                path,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        self.lookup = _function(self._lookup, _STRINGS)
        self.names = _function(self._names, tf.TensorSpec([None], tf.int32))

    def __len__(self) -> int:
        return len(self.tags)

    def _lookup(self, tags):
        """`(B,)` tag strings -> `(B,)` int32 ids; -1 for an unknown tag."""
        return tf.cast(self._to_id.lookup(tags), tf.int32)

    def _names(self, ids):
        """`(B,)` int32 ids -> `(B,)` tag strings; "" for an id out of range."""
        return self._to_tag.lookup(tf.cast(ids, tf.int64))
