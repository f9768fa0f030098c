"""Data: sources, in-graph tokenizers, vocabularies, the tf.data pipelines, recipes.

Entry points (the trainer, evaluator, exporter and CLI call these)::

    data = build_data(cfg)                       # recipes + vocabularies + tokenizers
    dataset_fn = data.train_dataset_fn(start=(epoch, index))
    dist = strategy.distribute_datasets_from_function(dataset_fn)
    dev = data.eval_dataset("dev", batch_size=64)  # finite, in file order
    refs = data.references("dev")                # source text -> [reference, ...]
    data.report()                                # dropped/truncated/replaced counts

Batch keys (int32 unless said; padding id 0):

- seq2seq: `source_ids (B, S)` = tokens + EOS, `target_in_ids (B, T)` = BOS + tokens,
  `target_out_ids (B, T)` = tokens + EOS.
- decoder_lm: `token_ids (B, T)` = BOS + tokens, `target_out_ids (B, T)` = tokens + EOS.
- encoder_classifier: `source_ids (B, S)` = tokens + EOS, `label (B,)`.
- always: `example_id (B,)` int64 = corpus position in `data.train` * 2**32 + 0-based
  line (row, record) number; optional `condition (B,)` (tag id of `condition_column`).
- training only: `epoch ()` and `index ()` int64, the batch's position in the stream
  (index in its epoch). After a step, the position to checkpoint is the largest
  `(epoch, index)` over the step's batches (all replicas, all micro-batches), with the
  index plus one; `train_dataset_fn(start=that)` continues exactly there.
- evaluation only: `source_text`, `target_text` (raw strings; the label for
  classifiers; no target_text for LMs).

Training batches are padded, on both sides, to their length bucket's boundary, so only
a bounded set of shapes reaches the model (`data_stats` reports them).
"""

from kerastx.data.building import build_vocabularies
from kerastx.data.commands import run_data_stats, run_vocab
from kerastx.data.errors import DataError
from kerastx.data.module import DataModule, build_data
from kerastx.data.sources import example_id, split_example_id
from kerastx.data.stats import data_stats, format_stats, measure_pipeline
from kerastx.data.tokenizers import (
    SentencePieceTokenizer,
    TagVocabulary,
    Tokenizer,
    VocabTokenizer,
    WordPieceTokenizer,
    make_tokenizer,
)
from kerastx.data.vocab import SPECIALS
from kerastx.special_ids import BOS_ID as BOS
from kerastx.special_ids import EOS_ID as EOS
from kerastx.special_ids import PAD_ID as PAD
from kerastx.special_ids import UNK_ID as UNK

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIALS",
    "UNK",
    "DataError",
    "DataModule",
    "SentencePieceTokenizer",
    "TagVocabulary",
    "Tokenizer",
    "VocabTokenizer",
    "WordPieceTokenizer",
    "build_data",
    "build_vocabularies",
    "data_stats",
    "example_id",
    "format_stats",
    "make_tokenizer",
    "run_data_stats",
    "run_vocab",
    "measure_pipeline",
    "split_example_id",
]
