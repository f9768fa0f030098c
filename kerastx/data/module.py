"""`build_data(cfg) -> DataModule`: what the trainer, evaluator and exporter use.

`build_data` is cheap: it prepares recipe files, builds or checks the vocabularies and
makes the tokenizers. The corpora are read and tokenized on first use (the training
stream, an evaluation set, `report()`), once per `DataModule`.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from kerastx import tasks
from kerastx.data import (
    batching,
    building,
    conditions,
    encode,
    pipeline,
    shards,
    sources,
    tokenizers,
)
from kerastx.data.errors import DataError

logger = logging.getLogger("kerastx.data")


class DataModule:
    """The data of one experiment.

    Args:
        cfg: ExperimentConfig.
        paths: dict from `build_vocabularies`.
        raw_train: list of RawCorpus or None. Training corpora already read.
        raw_eval: dict or None. "dev"/"test" -> RawCorpus already read.
        streamed: bool. The training corpora are streamed (`data.stream`): training reads
            `stream_dataset`, and `train_corpora()` and `report()` describe the
            vocabulary sample (`raw_train` when already read).
        list_shards: callable or None. Returns the streamed files (`shards.shards`);
            called on first use, so evaluating or exporting a run needs no training
            file.
        why: str. Why the corpora are streamed or not (for the log).
        use_prepared: bool. Read `kerastx prepare`d shards when the run has them.

    Attributes:
        source_tokenizer: Tokenizer. Source side (the text of LMs and classifiers).
        target_tokenizer: Tokenizer or None. Target side (seq2seq; the same object as
            `source_tokenizer` with shared_vocab; for decoder_lm the source tokenizer;
            None for classifiers).
        labels: TagVocabulary or None. Classifier labels.
        conditions: TagVocabulary or None. Condition tags (`condition_column` with
            `model.num_conditions`).
        condition_dim: int. > 0: the conditions are float vectors of this length
            (`model.condition_dim`; batches hold `condition (B, condition_dim)` float32).
        boundaries: int array. Bucket boundaries (padded lengths).
        streamed: bool. Training corpora are streamed from their files.
    """

    def __init__(
        self,
        cfg,
        paths: dict,
        raw_train=None,
        raw_eval=None,
        streamed: bool = False,
        list_shards=None,
        why: str = "",
        use_prepared: bool = True,
    ):
        self.cfg = cfg
        self.model_type = cfg.model.type
        self.task = tasks.get(cfg.model.type)  # the family's facts: fields, batch layout
        d = cfg.data
        self.source_tokenizer = tokenizers.make_tokenizer(
            d.source_tokenizer.type,
            paths["source"],
            d.source_tokenizer.lowercase,
            name="source_tokenizer",
        )
        if self.task.target_vocabulary == "own":
            if paths["target"] == paths["source"]:
                self.target_tokenizer = self.source_tokenizer
            else:
                self.target_tokenizer = tokenizers.make_tokenizer(
                    d.target_tokenizer.type,
                    paths["target"],
                    d.target_tokenizer.lowercase,
                    name="target_tokenizer",
                )
        elif self.task.target_vocabulary == "source":
            self.target_tokenizer = self.source_tokenizer
        else:
            self.target_tokenizer = None
        self.labels = tokenizers.TagVocabulary(paths["labels"]) if "labels" in paths else None
        self.conditions = (
            tokenizers.TagVocabulary(paths["conditions"]) if "conditions" in paths else None
        )
        self.condition_dim = int(cfg.model.condition_dim or 0)
        self.paths = dict(paths)
        self.max_length = self.task(cfg).max_length()
        self.boundaries = batching.bucket_boundaries(
            self.max_length, d.bucket_width, d.bucket_growth
        )
        self._raw_train = raw_train
        self._raw_eval = dict(raw_eval or {})
        self._train: list[encode.Encoded] | None = None
        self._eval: dict[str, tuple[sources.RawCorpus, encode.Encoded]] = {}
        self._store: pipeline.Store | None = None
        self.streamed = streamed
        self._list_shards = list_shards
        self._shards = None
        self._why = why
        self._use_prepared = use_prepared
        self.prepared: list[str] | None = None  # `kerastx prepare`d shards, when read
        self._stream = None

    @property
    def stream_shards(self):
        """The streamed training files (`shards.Shard`s), listed and checked once."""
        if self._shards is None and self._list_shards is not None:
            self._shards = self._list_shards()
        return self._shards

    # -- loading -------------------------------------------------------------------------

    def _limits(self) -> tuple[int, int]:
        return self.cfg.data.max_source_length, self.cfg.data.max_target_length

    def train_corpora(self) -> list[encode.Encoded]:
        """The training corpora, tokenized, after the length policy (read once)."""
        if self._train is None:
            raw = self._raw_train
            if raw is None and self.streamed:
                raw = shards.sample(self.cfg, self.task.fields, self.stream_shards)
            elif raw is None:
                raw = building.load_train_corpora(self.cfg)
            d = self.cfg.data
            self._train = [
                encode.encode_corpus(
                    r,
                    i,
                    self,
                    self._limits(),
                    d.length_policy,
                    d.empty_examples,
                    _condition_column(d.train[i] if i < len(d.train) else None),
                )
                for i, r in enumerate(raw)
            ]
            self._raw_train = None  # the strings are not needed any more
            for corpus in self._train:
                _log_counts(corpus.name, corpus.counts)
            if not sum(len(c) for c in self._train):
                why = _why_none_left([c.counts for c in self._train])
                raise DataError(f"data.train: no training example left ({why})")
        return self._train

    def _eval_split(self, split: str) -> tuple[sources.RawCorpus, encode.Encoded]:
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test'; got {split!r}")
        if split not in self._eval:
            corpus = getattr(self.cfg.data, split)
            if corpus is None:
                raise DataError(f"data.{split}: no {split} corpus in the experiment")
            raw = self._raw_eval.pop(split, None)
            if raw is None:
                raw = sources.load_corpus(
                    corpus, split, 0, self.task.fields, self.cfg.data, self.cfg.seed
                )
            enc = encode.encode_corpus(
                raw,
                0,
                self,
                self._limits(),
                "eval",
                self.cfg.data.empty_examples,
                _condition_column(corpus),
            )
            _log_counts(enc.name, enc.counts)
            if not len(enc):
                raise DataError(f"data.{split}: no example left ({_why_none_left([enc.counts])})")
            self._eval[split] = (raw, enc)
        return self._eval[split]

    def _train_store(self) -> pipeline.Store:
        if self._store is None:
            corpora = self.train_corpora()

            def cat(parts, dtype):
                return tf.constant(np.concatenate(parts).astype(dtype))

            def ragged(parts):
                values = np.concatenate([p.values for p in parts]).astype(np.int32)
                lengths = np.concatenate([p.lengths for p in parts]).astype(np.int64)
                return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)

            with_tags = [c.condition is not None for c in corpora]
            if any(with_tags) and not all(with_tags):
                missing = with_tags.index(False)
                raise DataError(
                    f"data.train[{missing}]: has no condition_column while other training "
                    f"corpora have one; every training example needs a condition tag"
                )
            self._store = pipeline.Store(
                source=ragged([c.source for c in corpora]),
                target=ragged([c.target for c in corpora])
                if corpora[0].target is not None
                else None,
                example_id=cat([c.example_id for c in corpora], np.int64),
                label=cat([c.label for c in corpora], np.int32)
                if corpora[0].label is not None
                else None,
                condition=cat(
                    [c.condition for c in corpora], np.float32 if self.condition_dim else np.int32
                )
                if corpora[0].condition is not None
                else None,
            )
        return self._store

    # -- training ------------------------------------------------------------------------

    def stream_dataset(self, num_replicas: int, pipes: int = 1, pipe: int = 0):
        """The infinite streamed batches of one input pipeline (streamed corpora only).

        Args:
            num_replicas: int. Replicas in sync (the per-replica token budget).
            pipes: int. Input pipelines (workers); each reads its own part of the files.
            pipe: int. This pipeline.

        Returns:
            tf.data.Dataset of per-replica batches (the training keys, `epoch`,
            `index`, and `counts`: int64 (5,) examples read, dropped, empty, truncated,
            replaced that the batch accounts for; see `kerastx.data.stream`).
        """
        from kerastx.data import stream

        if not self.streamed:
            raise ValueError("stream_dataset: the training corpora are read in memory")
        if self.condition_dim:
            raise DataError(
                "data.train: condition vectors (model.condition_dim) are read in memory only, "
                "not streamed; set data.stream: false (or use tag conditions, "
                "model.num_conditions)"
            )
        if self._stream is None:
            from kerastx.data import prepared

            if self._use_prepared:
                self.prepared = prepared.prepared_paths(self.cfg, self)
            if self.prepared:
                where = f"{len(self.prepared)} prepared shards in {prepared.PREPARED_DIR}/"
            else:
                where = shards.describe(self.stream_shards)
            logger.info("data.train: streamed from %s (%s)", where, self._why)
            self._stream = stream.Stream(
                self.cfg,
                self,
                self.stream_shards,
                self.task.layout,
                self.task.fields,
                prepared=self.prepared,
            )
        caps = stream.capacities_for(self, num_replicas)
        return self._stream.dataset(0, pipes, pipe, caps)

    def stream_error(self, err: BaseException) -> DataError | None:
        """The DataError a failed streamed-input check raised inside a step, or None."""
        if self._stream is None:
            return None
        problem = self._stream.error_from(err)
        if problem is None and self.cfg.data.service:
            from kerastx.data import service

            problem = service.error_from(err)
        return problem

    def batch_lengths(self, corpora: list[encode.Encoded]) -> np.ndarray:
        """Batching length of each example: max of the sides' model lengths."""
        parts = []
        for c in corpora:
            src, tgt = c.model_lengths()
            parts.append(np.maximum(src, tgt) if tgt is not None else src)
        return np.concatenate(parts)

    def planner(self, num_replicas: int = 1, boundaries=None) -> batching.Planner:
        """The batch planner of the training stream for a number of replicas in sync."""
        d = self.cfg.data
        corpora = self.train_corpora()
        bounds = self.boundaries if boundaries is None else boundaries
        budget = batching.per_replica_budget(
            d.batch_size, d.batch_unit, d.batch_scope, num_replicas
        )
        caps = batching.capacities(bounds, budget, d.batch_unit)
        return batching.Planner(
            self.batch_lengths(corpora),
            [len(c) for c in corpora],
            [c.weight for c in corpora],
            bounds,
            caps,
            self.cfg.seed,
            d.shuffle_buffer,
        )

    def train_dataset_fn(self, start: tuple[int, int] = (0, 0)):
        """The function to hand to `strategy.distribute_datasets_from_function`.

        Args:
            start: (epoch, index). Where the stream starts: the next batch to train on.

        Returns:
            callable(input_context or None) -> tf.data.Dataset of per-replica batches
            (infinite, batch keys of the data contract plus scalar int64 `epoch` and
            `index`).
        """
        if self.streamed:
            if tuple(start) != (0, 0):
                raise ValueError("streamed corpora resume from an iterator state, not a position")

            def streamed_fn(input_context=None):
                replicas = input_context.num_replicas_in_sync if input_context else 1
                pipes = input_context.num_input_pipelines if input_context else 1
                pipe = input_context.input_pipeline_id if input_context else 0
                return self.stream_dataset(replicas, pipes, pipe)

            return streamed_fn
        store = self._train_store()  # reads the data now, outside the strategy
        start = (int(start[0]), int(start[1]))
        if start[0] < 0 or start[1] < 0:
            raise ValueError(f"start must be a non-negative (epoch, index); got {start}")

        def dataset_fn(input_context=None):
            replicas = input_context.num_replicas_in_sync if input_context else 1
            pipes = input_context.num_input_pipelines if input_context else 1
            pipe = input_context.input_pipeline_id if input_context else 0
            if replicas % pipes:
                raise DataError(
                    f"{replicas} replicas cannot be split over {pipes} input pipelines evenly"
                )
            planner = self.planner(replicas)
            batches = len(planner.batches(start[0])[1])
            if start[1] > batches:
                raise DataError(
                    f"start position {start} is past the end of epoch {start[0]} ({batches} "
                    f"batches with {replicas} replicas); the saved position does not match "
                    f"this data or batching"
                )
            return pipeline.train_dataset(
                planner,
                store,
                self.task.layout,
                start,
                pipes,
                pipe,
                replicas // pipes,
                self.cfg.data.num_parallel_calls,
            )

        return dataset_fn

    # -- evaluation ----------------------------------------------------------------------

    def eval_dataset(self, split: str, batch_size: int) -> tf.data.Dataset:
        """A finite, ordered dataset of an evaluation set; every example kept.

        Batches hold the training keys (without epoch/index) plus `source_text` and
        `target_text` (raw lines; for classifiers the label, for LMs absent). Too-long
        examples are truncated for the model and counted in `report()`.

        Args:
            split: str. "dev" or "test".
            batch_size: int. Examples per batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
        raw, enc = self._eval_split(split)
        target_text = raw.target if raw.target is not None else raw.label
        rows = enc.rows
        store = pipeline.Store(
            source=enc.source.to_tf(),
            target=enc.target.to_tf() if enc.target is not None else None,
            example_id=tf.constant(enc.example_id),
            label=tf.constant(enc.label) if enc.label is not None else None,
            condition=tf.constant(enc.condition) if enc.condition is not None else None,
            source_text=tf.constant([raw.source[i] for i in rows], tf.string),
            target_text=tf.constant([target_text[i] for i in rows], tf.string)
            if target_text is not None
            else None,
        )
        src, tgt = enc.model_lengths()
        return pipeline.eval_dataset(store, self.task.layout, src, tgt, self.boundaries, batch_size)

    def references(self, split: str) -> dict[str, list[str]]:
        """Source text -> every distinct reference of it in the split, in file order.

        For G2P a word with several pronunciations counts as correct if the output equals
        any of them. Classifiers: text -> labels. Decoder-only LMs: empty (no references).
        With a condition the key is the input line `CONDITION<TAB>source` (see
        `input_lines`): the same source under two conditions has its own references.
        """
        raw, enc = self._eval_split(split)
        refs = raw.target if raw.target is not None else raw.label
        out: dict[str, list[str]] = {}
        if refs is None:
            return out
        keys = raw.source
        if enc.condition is not None:
            texts = [raw.source[i] for i in enc.rows]
            keys = self.input_lines(enc.condition, texts)
            refs = [refs[i] for i in enc.rows]
        for source, ref in zip(keys, refs):
            known = out.setdefault(source, [])
            if ref not in known:
                known.append(ref)
        return out

    def condition_strings(self, values) -> list[str]:
        """Conditions as text: `(N,)` tag ids -> tags, `(N, C)` vectors -> numbers
        separated by spaces (`conditions.vector_text`)."""
        values = np.asarray(values)
        if self.condition_dim:
            return [conditions.vector_text(v) for v in values]
        return [self.conditions.tags[int(i)] for i in values]

    def input_lines(self, condition, texts: list[str]) -> list[str]:
        """The input lines `CONDITION<TAB>TEXT` of conditioned examples (what `kerastx
        predict` reads for a conditioned model), or the texts without a condition."""
        if condition is None:
            return list(texts)
        return [
            conditions.join_line(c, t) for c, t in zip(self.condition_strings(condition), texts)
        ]

    def split_counts(self, split: str) -> dict:
        """The counts of one evaluation split (examples, truncated, ...; see `report`)."""
        return dict(self._eval_split(split)[1].counts)

    def report(self) -> dict:
        """Counts per split and corpus: examples, kept, dropped, truncated, replaced, ..."""
        out = {"train": _summed([(c.name, c.counts) for c in self.train_corpora()])}
        if self.streamed:
            # Streamed: these are the vocabulary sample's counts; the epochs' own are
            # logged as training reads them.
            out["train"]["sample_of_streamed"] = shards.describe(self.stream_shards)
        for split in ("dev", "test"):
            if getattr(self.cfg.data, split) is not None:
                raw, enc = self._eval_split(split)
                out[split] = _summed([(enc.name, enc.counts)])
        return out


def _condition_column(corpus) -> str | None:
    return getattr(corpus, "condition_column", None)


def _summed(named: list[tuple[str, dict]]) -> dict:
    total: dict = {}
    for _, counts in named:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    total["corpora"] = [{"name": name, **counts} for name, counts in named]
    return total


def _why_none_left(counts: list[dict]) -> str:
    dropped = sum(c["dropped"] for c in counts)
    empty = sum(c["empty"] for c in counts)
    why = []
    if dropped or not empty:
        why.append(f"{dropped} dropped as longer than data.max_source_length/max_target_length")
    if empty:
        why.append(f"{empty} empty, dropped by data.empty_examples: drop")
    return "; ".join(why)


def _log_counts(name: str, counts: dict) -> None:
    parts = [f"{counts['examples']} examples"]
    for key, label in (
        ("dropped", "dropped"),
        ("empty", "empty dropped"),
        ("truncated", "truncated"),
        ("replaced", "replaced"),
    ):
        if counts.get(key):
            parts.append(f"{counts[key]} {label}")
    logger.info("%s: %s", name, ", ".join(parts))


def build_data(cfg, read_first: bool = False, use_prepared: bool = True) -> DataModule:
    """Prepares recipes and vocabularies, and returns the experiment's DataModule.

    Args:
        cfg: ExperimentConfig.
        read_first: bool. Read every corpus (train, dev, test) before building the
            vocabularies, so a bad data file stops before anything is written into the
            run directory (`kerastx data-stats`). By default dev and test are read on
            first use.
        use_prepared: bool. Streamed corpora with `kerastx prepare`d shards in the run
            directory read those (checked against their inputs) instead of the text.
    """
    from kerastx.data import prepared as prepare

    cache: dict = {}
    fields = tasks.get(cfg.model.type).fields
    streamed, why = shards.choose(cfg)
    if not streamed and use_prepared and prepare.has_prepared(cfg.run_dir):
        streamed, why = True, f"{why}, but the run has prepared shards (kerastx prepare)"
    listed: list = []

    def list_shards():
        if not listed:
            listed.append(shards.shards(cfg, fields))
        return listed[0]

    def load_train():
        if "train" not in cache:
            if streamed:
                cache["train"] = shards.sample(cfg, fields, list_shards())
            else:
                cache["train"] = building.load_train_corpora(cfg)
        return cache["train"]

    raw_eval = {}
    if read_first:
        load_train()
        for split in ("dev", "test"):
            corpus = getattr(cfg.data, split)
            if corpus is not None:
                raw_eval[split] = sources.load_corpus(corpus, split, 0, fields, cfg.data, cfg.seed)
    note = None
    if streamed:

        def note():
            return {"data.vocab_sample": cfg.data.vocab_sample, "files": len(list_shards())}

    paths = building.build_vocabularies(cfg, load_train, note=note)
    if not streamed:
        logger.info("data.train: read into memory (%s)", why)
    return DataModule(
        cfg,
        paths,
        raw_train=cache.get("train"),
        raw_eval=raw_eval,
        streamed=streamed,
        list_shards=list_shards if streamed else None,
        why=why,
        use_prepared=use_prepared,
    )
