"""The Task interface: everything kerastx does that depends on the model family.

A task is one class per family (`model.type`), registered in `kerastx.tasks` (the one
registry). The trainer, evaluation, export, predict, the data pipeline, the config
validator and the bench hold a task and call it; none of them asks which family it is.
Studied patterns: the TF Model Garden's `official/core/base_task.py` (a task builds
its model, its inputs, its losses and its metrics) and OpenNMT-tf's `Model` (a family
also owns its serving signatures and how it decodes).

A task has two halves:

- **Facts** (class attributes and classmethods, plain Python): which corpus fields it
  reads, which `model:` keys its model takes, which corpus types feed it, how a batch is
  laid out, which metrics it can compute and in which direction. `kerastx validate`
  and `schema` read them without importing TensorFlow, so family files import their
  TensorFlow-side modules (models, inference, export, ...) inside the methods that need
  them. Those modules never import `kerastx.tasks`; they receive the task object
  (`tests/test_architecture.py` checks the import graph has no cycle, function-level
  imports included).
- **Behaviour** (methods of an instance made from the resolved config, `task.cfg`):
  build the model, split a batch into model inputs and labels, decode for evaluation,
  TensorBoard extras, predict, export and the export's parity check.

Adding a family is one file with a `Task` subclass and one `register` line; see
docs/architecture.md "A new model family" and the tagger family defined in
tests/test_new_family.py, which trains, evaluates, predicts and exports through the
public functions without any change under `kerastx/`.
"""

from __future__ import annotations

from typing import ClassVar

from kerastx.errors import KerastxError
from kerastx.metrics import LOSS_METRICS
from kerastx.special_ids import PAD_ID

# The `model:` keys every Transformer family takes (each family adds its own).
TRANSFORMER_MODEL_KEYS = (
    "d_model",
    "num_heads",
    "ffn_dim",
    "activation",
    "dropout",
    "attention_dropout",
    "norm",
    "norm_position",
    "norm_epsilon",
    "position_encoding",
    "max_length",
    "scale_embeddings",
    "num_experts",
    "experts_top_k",
    "expert_capacity_factor",
    "moe_every",
    "moe_aux_loss_weight",
    "moe_z_loss_weight",
    "num_conditions",
    "condition_dim",
)


class Task:
    """One model family. Subclasses set the facts and implement the behaviour.

    Class attributes (facts):
        name: the `model.type` value (set by `kerastx.tasks.register`).
        fields: the corpus fields an example has: "source" and optionally "target"
            (token text) or "label" (a class tag). Decides what `data:` corpora read.
        target_vocabulary: "own" (a target tokenizer of its own; `data.shared_vocab`
            joins it with the source's), "source" (targets are source-side text: one
            tokenizer) or None (no token targets).
        layout: the training batch, `key -> (field, framing)`: framing "eos" = tokens +
            EOS, "bos" = BOS + tokens (padded to the field's bucket length), None = one
            id per example (a label). Every batch also has `example_id` and, when the
            data has one, `condition`.
        input_keys: the batch keys the model reads (plus `condition`).
        label_key: the batch key of the labels the loss reads.
        label_pad_id: the label id the loss ignores (None: every label counts).
        source_key / target_key: the padded id tensors whose real tokens are the
            step's source and target tokens (throughput and MFU); None if absent.
        model_keys: the `model:` keys its model's constructor takes (the rest are
            refused by the validator when set).
        corpus_types: the corpus types that give it what it trains on.
        decoded_metrics: metrics it computes from decoded text (`evaluation.metrics`).
        decode_input_key: the id tensor a text decoder reads (generation tasks).
    """

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ("source",)
    target_vocabulary: ClassVar[str | None] = None
    layout: ClassVar[dict[str, tuple[str, str | None]]] = {}
    input_keys: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = ""
    label_pad_id: ClassVar[int | None] = PAD_ID
    source_key: ClassVar[str | None] = None
    target_key: ClassVar[str | None] = None
    model_keys: ClassVar[tuple[str, ...]] = ()
    corpus_types: ClassVar[tuple[str, ...]] = ()
    decoded_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    # -- facts ---------------------------------------------------------------------------

    @classmethod
    def default_metrics(cls, corpus_type: str | None) -> tuple[str, ...]:
        """The decoded metrics computed when `evaluation.metrics` is empty."""
        del corpus_type
        return ()

    @classmethod
    def chosen_metrics(cls, cfg) -> tuple[str, ...]:
        """The decoded metrics an evaluation of `cfg` computes (its choice or the default)."""
        dev = cfg.data.dev or cfg.data.test
        return tuple(cfg.evaluation.metrics) or cls.default_metrics(getattr(dev, "type", None))

    @classmethod
    def metric_names(cls, cfg) -> tuple[str, ...]:
        """Every metric an evaluation of `cfg` reports (what `best_metric` may name)."""
        return LOSS_METRICS + cls.chosen_metrics(cfg)

    @classmethod
    def parameter_count(cls, model, sizes) -> int | None:
        """The parameters of this family's model, in closed form (no TensorFlow).

        Args:
            model: the `model:` section.
            sizes: a `kerastx.sizing.Sizes` (vocabularies, classes).

        Returns:
            The count `count_params()` gives once built, or None where the family does
            not say (then `validate` warns of nothing and an out-of-memory message at
            build time names no size).
        """
        del model, sizes
        return None

    @classmethod
    def check_config(cls, cfg, fail) -> None:
        """Family-specific cross-field rules: `fail(key_path, message, *other_paths)`."""
        del cfg, fail

    # -- data ----------------------------------------------------------------------------

    def max_length(self) -> int:
        """The longest example side the data keeps (the bucket boundaries' top)."""
        d = self.cfg.data
        if "target" in self.fields:
            return max(d.max_source_length, d.max_target_length)
        return d.max_source_length

    # -- model ---------------------------------------------------------------------------

    def model_arguments(self) -> dict:
        """The configured `model:` values of the keys this family's model takes."""
        return {key: getattr(self.cfg.model, key) for key in self.model_keys}

    def build_model(self, data):
        """Creates the model with sizes from `data` (vocabularies, labels); not built."""
        raise NotImplementedError

    def example_inputs(self) -> dict:
        """A tiny input batch that builds every variable of the model."""
        raise NotImplementedError

    def model_inputs(self, batch: dict) -> tuple[dict, object]:
        """Splits a batch into the model's inputs and the labels."""
        inputs = {key: batch[key] for key in self.input_keys}
        if "condition" in batch:
            inputs["condition"] = batch["condition"]
        return inputs, batch[self.label_key]

    def flops(self, model):
        """`fn(window sums) -> training FLOPs` (see `kerastx.train.flops`)."""
        from kerastx.train import flops

        return flops.model_flops(
            model,
            encoder=self.source_key is not None,
            decoder=self.target_key is not None,
        )

    # -- evaluation ----------------------------------------------------------------------

    def metrics_from_losses(self, results: dict) -> dict:
        """Task metrics that follow from the loss pass (a classifier's accuracy)."""
        del results
        return {}

    def text_decoder(self, model, data, settings: dict):
        """`fn(batch) -> list of hypothesis strings` for evaluation, or None (no decoding).

        `batch` holds the rows of an evaluation batch chosen for decoding (every key
        of the data contract except the text).
        """
        del model, data, settings
        return None

    def attention_maps(self, model, data, split: str, count: int) -> list[dict]:
        """Images for TensorBoard (`evaluation.attention_images`); none by default."""
        del model, data, split, count
        return []

    # -- predict, score, export ----------------------------------------------------------

    def predict(self, model, data, lines: list[str], settings: dict, batch_size: int, jit):
        """Outputs of raw input lines with the framework: a `kerastx.predict.Decoded`."""
        raise NotImplementedError

    def predict_exported(self, loaded, lines: list[str], settings: dict, batch_size: int):
        """As `predict`, through a loaded SavedModel of this family."""
        raise NotImplementedError

    def input_tokens_kept(self) -> int:
        """The most tokens of a raw input text that `predict`, `score` and the export
        keep: the source with its EOS fits `data.max_source_length`. A longer text is
        cut (counted and reported, or refused: `decoding.long_inputs`)."""
        return self.cfg.data.max_source_length - 1

    def outputs_per_input(self, settings: dict) -> int:
        """How many output lines `predict` writes per input (n-best)."""
        del settings
        return 1

    def score(self, model, data, sources: list[str], targets: list[str]) -> list[str]:
        """`kerastx score` lines (log-probability, tokens) of source/target pairs."""
        del model, data, sources, targets
        raise KerastxError(f"score: a model of type '{self.name}' has no targets to score")

    def export_module(self, model, data):
        """The `tf.Module` the export saves, with a `signatures()` method and the
        `source_tokenizer` it encodes input with (`predict` on the export counts the
        inputs it cuts with that tokenizer, see `input_tokens_kept`)."""
        raise NotImplementedError

    def parity_check(self, loaded, model, data, split: str, count: int) -> int:
        """Compares the reloaded export with the framework on `count` examples of `split`.

        Returns:
            The number of examples checked.

        Raises:
            kerastx.export.ExportParityError: any difference.
        """
        raise NotImplementedError
