"""Data sources: every corpus type of the `data:` section read into memory as strings.

Which fields an example has depends on the model family (`Task.fields`): source text
always, plus target text (seq2seq) or a label (classifiers). A decoder-only LM reads one
text, the *source* side of the corpus (a `text` file's lines, a parallel corpus's source
file, a TSV/TFRecord `source_column`, a cmudict word, a synthetic source).

Line formats:

- parallel: two files, one example a line, line-aligned (line counts must be equal).
- tsv: tab-separated, first line a header naming the columns; no quoting; every row has
  as many fields as the header. A glob reads the sorted files in turn, each with a header.
- tfrecord: `tf.Example` records; the named features hold one bytes value (a label may
  also be one int64; a condition vector is a float_list, see `kerastx.data.conditions`).
- text: one example a line.
- labelled: `label<TAB>text` - the label is everything before the first tab.
- synthetic: generated (`kerastx.data.synthetic`); cmudict: the G2P recipe
  (`kerastx.data.recipes`).

Sources read every line (row, record), empty ones included; an example with an empty
side is dropped and counted, or refused, after tokenization (`data.empty_examples`, see
`kerastx.data.encode`). Every example keeps its position in its corpus (0-based line,
row or record number), which makes its `example_id` (see `example_id`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from kerastx.data import conditions, recipes, synthetic, textio
from kerastx.data.errors import DataError

# example_id = corpus position in its list (train[i]; 0 for dev/test) * 2**32 + position.
ID_STRIDE = 2**32


def example_id(corpus_index: int, position: int) -> int:
    """The stable id of an example: `corpus_index * 2**32 + position`."""
    return corpus_index * ID_STRIDE + position


def split_example_id(eid: int) -> tuple[int, int]:
    """`(corpus_index, position)` of an example id."""
    return int(eid) // ID_STRIDE, int(eid) % ID_STRIDE


@dataclasses.dataclass
class RawCorpus:
    """One corpus read into memory.

    Attributes:
        name: str. Names the corpus in reports, e.g. "train[0] parallel a.src | a.tgt".
        source: list of str. Source text (or LM text).
        target: list of str or None. Target text (seq2seq).
        label: list of str or None. Class labels (classifier).
        condition: list of str or None. Condition tags (tsv/tfrecord condition_column).
        where: callable int -> str. `file:line` (or `file: record i`) of example i.
        target_where: callable or None. The same for the target side when it comes from
            another file (parallel); defaults to `where`.
        replaced: int. Lines in which invalid UTF-8 was replaced.
        weight: float. Sampling weight among the training corpora.
    """

    name: str
    source: list[str]
    where: Callable[[int], str]
    target: list[str] | None = None
    label: list[str] | None = None
    condition: list[str] | None = None
    replaced: int = 0
    weight: float = 1.0
    target_where: Callable[[int], str] | None = None

    def __len__(self) -> int:
        return len(self.source)


def _parallel(src: str, tgt: str | None, policy: str) -> tuple:
    s = textio.read_lines(src, policy)
    if tgt is None:
        return s.lines, None, s.where, s.replaced, None
    t = textio.read_lines(tgt, policy)
    if len(s.lines) != len(t.lines):
        raise DataError(
            f"{src}: {len(s.lines)} lines but {tgt}: {len(t.lines)} lines; source and target "
            f"files must be line-aligned"
        )
    return s.lines, t.lines, s.where, s.replaced + t.replaced, t.where


def corpus_columns(corpus, fields: tuple[str, ...]) -> dict[str, str]:
    """field -> the TSV column (TFRecord feature) a corpus reads it from."""
    columns = {"source": corpus.source_column}
    if "target" in fields:
        columns["target"] = corpus.target_column
    if "label" in fields:
        columns["label"] = corpus.label_column
    if corpus.condition_column:
        columns["condition"] = corpus.condition_column
    return columns


def _tsv(corpus, needs: tuple[str, ...], policy: str) -> dict:
    columns = corpus_columns(corpus, needs)
    out: dict = {key: [] for key in columns}
    files, replaced = [], 0
    for path in textio.expand(corpus.path):
        lines, rep = textio.read_file(path, policy)
        replaced += rep
        header = lines[0].split("\t")
        index = {}
        for key, name in columns.items():
            if name not in header:
                raise DataError(
                    f"{path}:1: no column '{name}' in the header (columns: {', '.join(header)})"
                )
            index[key] = header.index(name)
        if len(lines) == 1:
            raise DataError(f"{path}: no rows after the header")
        files.append((path, len(out["source"]), len(lines) - 1, 2))
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{number}: {len(fields)} tab-separated fields, but "
                    f"the header has {len(header)}"
                )
            for key, i in index.items():
                out[key].append(fields[i])
    out["where"] = textio.Lines(lines=[], files=files).where
    out["replaced"] = replaced
    return out


def _feature_text(feature, key: str, role: str, where: str, policy: str) -> tuple[str, int]:
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else []
    if kind == "float_list" and role == "condition":  # a vector: its numbers as text
        return conditions.vector_text(values), 0
    if len(values) != 1:
        raise DataError(
            f"{where}: feature '{key}' must hold exactly one value; it holds {len(values)}"
        )
    if kind == "int64_list" and role in ("label", "condition"):
        return str(values[0]), 0
    if kind != "bytes_list":
        raise DataError(f"{where}: feature '{key}' must be bytes (a string); it is {kind}")
    text, replaced = textio.decode(values[0], f"{where}: feature '{key}'", policy, lines=False)
    return text, min(replaced, 1)


def _tfrecord(corpus, needs: tuple[str, ...], policy: str) -> dict:
    import tensorflow as tf

    columns = corpus_columns(corpus, needs)
    out: dict = {key: [] for key in columns}
    places: list[tuple[str, int, int]] = []
    replaced = 0
    for path in textio.expand(corpus.path):
        head = textio.read_bytes(path)[:2]  # missing and empty files
        compression = "GZIP" if head == textio.GZIP_MAGIC else ""  # as `.gz` text files
        start = len(out["source"])
        try:
            records = tf.data.TFRecordDataset(path, compression_type=compression)
            for i, raw in enumerate(records.as_numpy_iterator()):
                example = tf.train.Example.FromString(raw)
                features = example.features.feature
                for key, name in columns.items():
                    where = f"{path}: record {i}"
                    if name not in features:
                        raise DataError(
                            f"{where}: no feature '{name}' (features: "
                            f"{', '.join(sorted(features))})"
                        )
                    text, rep = _feature_text(features[name], name, key, where, policy)
                    replaced += rep
                    out[key].append(text)
        except tf.errors.OpError as err:
            message = err.message.splitlines()[0] if err.message else type(err).__name__
            raise DataError(f"{path}: not a readable TFRecord file ({message})") from None
        places.append((path, start, len(out["source"]) - start))

    def where(i: int) -> str:
        for path, first, count in places:
            if first <= i < first + count:
                return f"{path}: record {i - first}"
        raise IndexError(i)

    out["where"] = where
    out["replaced"] = replaced
    return out


def load_corpus(
    corpus, split: str, index: int, fields: tuple[str, ...], data_cfg, seed: int
) -> RawCorpus:
    """Reads one corpus of the `data:` section.

    Args:
        corpus: CorpusConfig.
        split: str. "train", "dev" or "test".
        index: int. Position in `data.train` (0 for dev/test); part of the example ids.
        fields: tuple of str. The fields to read: "source", "target", "label" (the
            family's `Task.fields`).
        data_cfg: DataConfig. For `invalid_utf8` and `data_dir`.
        seed: int. The experiment seed (synthetic tasks).

    Returns:
        A `RawCorpus`.

    Raises:
        DataError: a missing, empty, malformed or misaligned file.
    """
    needs = fields
    policy = data_cfg.invalid_utf8
    label = f"{split}[{index}]" if split == "train" else split
    corpus = recipes.resolve(corpus, data_cfg)
    kind = corpus.type
    if kind in ("parallel", "cmudict"):
        if kind == "cmudict":
            paths = recipes.prepare_cmudict(data_cfg.data_dir, corpus.keep_stress)
            src, tgt = paths[corpus.split]
        else:
            src, tgt = corpus.source, corpus.target
        source, target, where, replaced, target_where = _parallel(
            src, tgt if "target" in needs else None, policy
        )
        name = f"{label} {kind} {src}" + (f" | {tgt}" if target is not None else "")
        return RawCorpus(
            name,
            source,
            where,
            target=target,
            replaced=replaced,
            weight=corpus.weight,
            target_where=target_where,
        )
    if kind == "synthetic":
        where_name = f"data.{split}" + (f"[{index}]" if split == "train" else "")
        source, target = synthetic.generate(
            corpus.task,
            corpus.num_examples,
            corpus.min_length,
            corpus.max_length,
            corpus.alphabet_size,
            seed,
            split,
            index,
        )
        return RawCorpus(
            f"{label} synthetic {corpus.task}",
            source,
            lambda i: f"{where_name} (synthetic {corpus.task}): example {i}",
            target=target if "target" in needs else None,
            weight=corpus.weight,
        )
    if kind in ("text", "labelled"):
        lines = textio.read_lines(corpus.path, policy)
        name = f"{label} {kind} {corpus.path}"
        if kind == "text":
            return RawCorpus(
                name, lines.lines, lines.where, replaced=lines.replaced, weight=corpus.weight
            )
        labels, texts = [], []
        for i, line in enumerate(lines.lines):
            tag, sep, text = line.partition("\t")
            if not sep:
                raise DataError(f"{lines.where(i)}: expected 'label<TAB>text', found no tab")
            if not tag:
                raise DataError(f"{lines.where(i)}: empty label before the tab")
            labels.append(tag)
            texts.append(text)
        return RawCorpus(
            name, texts, lines.where, label=labels, replaced=lines.replaced, weight=corpus.weight
        )
    if kind in ("tsv", "tfrecord"):
        read = _tsv if kind == "tsv" else _tfrecord
        out = read(corpus, needs, policy)
        return RawCorpus(
            f"{label} {kind} {corpus.path}",
            out["source"],
            out["where"],
            target=out.get("target"),
            label=out.get("label"),
            condition=out.get("condition"),
            replaced=out["replaced"],
            weight=corpus.weight,
        )
    raise DataError(f"data.{split}: unknown corpus type {kind!r}")  # pragma: no cover
