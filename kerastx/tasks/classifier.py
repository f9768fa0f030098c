"""Sequence classification: an encoder, pooling, and a class head."""

from __future__ import annotations

import os

from kerastx import sizing
from kerastx.tasks.base import TRANSFORMER_MODEL_KEYS, Task


class ClassifierTask(Task):
    """Text -> one label of a closed set (`EncoderClassifier`); labels from the data."""

    fields = ("source", "label")
    layout = {"source_ids": ("source", "eos"), "label": ("label", None)}
    input_keys = ("source_ids",)
    label_key = "label"
    label_pad_id = None  # every label counts
    source_key = "source_ids"
    model_keys = TRANSFORMER_MODEL_KEYS + ("num_layers", "pooling")
    corpus_types = ("labelled", "tsv", "tfrecord", "gettext")
    decoded_metrics = ("accuracy", "macro_f1")

    @classmethod
    def default_metrics(cls, corpus_type):
        del corpus_type
        return ("accuracy", "macro_f1")

    @classmethod
    def parameter_count(cls, model, sizes):
        return sizing.encoder_classifier(model, sizes.source_vocab, sizes.classes)

    def build_model(self, data):
        from kerastx.models import EncoderClassifier

        return EncoderClassifier(
            vocab_size=data.source_tokenizer.vocab_size,
            num_classes=len(data.labels),
            **self.model_arguments(),
        )

    def example_inputs(self):
        import tensorflow as tf

        return {"source_ids": tf.constant([[5, 6, 2, 0]], tf.int32)}

    def metrics_from_losses(self, results):
        # One label per example: the token accuracy of the loss pass is the accuracy.
        return {"accuracy": 100.0 * results.get("token_accuracy", 0.0)}

    def text_decoder(self, model, data, settings):
        # The decoded "text" of a classifier is its predicted label, so the decoded
        # metrics (accuracy against any reference label, macro-F1) use the same path.
        import tensorflow as tf

        del settings
        names = list(data.labels.tags)
        logits_fn = tf.function(
            lambda ids: model({"source_ids": ids}, training=False),
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
        )

        def decode(rows: dict) -> list[str]:
            best = tf.argmax(logits_fn(tf.cast(rows["source_ids"], tf.int32)), axis=-1)
            return [names[int(i)] for i in best.numpy()]

        return decode

    def predict(self, model, data, lines, settings, batch_size, jit=False):
        from kerastx import predict

        del settings, jit
        return predict.classify_lines(model, data, self.cfg, lines, batch_size)

    def predict_exported(self, loaded, lines, settings, batch_size):
        from kerastx import predict

        del settings
        return predict.classify_with_export(loaded, lines, batch_size)

    def export_module(self, model, data):
        from kerastx import export

        return export.ClassifierExport(
            model,
            data.source_tokenizer,
            data.labels,
            self.cfg.data.max_source_length,
            os.path.join(self.cfg.run_dir, "config.yaml"),
        )

    def parity_check(self, loaded, model, data, split, count):
        from kerastx import export, predict

        return export.compare_predictions(
            self, loaded, model, data, predict.split_texts(data, split, count)
        )
