"""Sequence-to-sequence (encoder-decoder): translation, G2P, any text -> text."""

from __future__ import annotations

from kerastx import sizing
from kerastx.special_ids import EOS_ID
from kerastx.tasks.base import TRANSFORMER_MODEL_KEYS
from kerastx.tasks.generation import GenerationTask


class Seq2SeqTask(GenerationTask):
    """An encoder reads the source; a decoder writes the target (`Seq2SeqTransformer`)."""

    fields = ("source", "target")
    target_vocabulary = "own"
    layout = {
        "source_ids": ("source", "eos"),
        "target_in_ids": ("target", "bos"),
        "target_out_ids": ("target", "eos"),
    }
    input_keys = ("source_ids", "target_in_ids")
    label_key = "target_out_ids"
    source_key = "source_ids"
    target_key = "target_out_ids"
    model_keys = TRANSFORMER_MODEL_KEYS + (
        "num_encoder_layers",
        "num_decoder_layers",
        "share_embeddings",
    )
    corpus_types = ("parallel", "tsv", "tfrecord", "synthetic", "cmudict", "gettext")
    decoded_metrics = ("wer", "per", "bleu", "chrf", "accuracy", "placeholders")
    decode_input_key = "source_ids"
    filler_id = EOS_ID

    @classmethod
    def default_metrics(cls, corpus_type):
        if corpus_type == "cmudict":
            return ("wer", "per")
        if corpus_type == "synthetic":
            return ("accuracy",)
        if corpus_type == "gettext":  # UI strings: placeholders must survive translation
            return ("bleu", "chrf", "placeholders")
        return ("bleu", "chrf")

    @classmethod
    def parameter_count(cls, model, sizes):
        return sizing.encoder_decoder(model, sizes.source_vocab, sizes.target_vocab)

    @classmethod
    def check_config(cls, cfg, fail):
        if cfg.model.share_embeddings == "all" and not cfg.data.shared_vocab:
            fail(
                ("model", "share_embeddings"),
                "'all' needs data.shared_vocab: true (one vocabulary for source and target)",
            )

    def build_model(self, data):
        from kerastx.models import Seq2SeqTransformer

        return Seq2SeqTransformer(
            source_vocab_size=data.source_tokenizer.vocab_size,
            target_vocab_size=data.target_tokenizer.vocab_size,
            **self.model_arguments(),
        )

    def example_inputs(self):
        import tensorflow as tf

        return {
            "source_ids": tf.constant([[5, 6, 2, 0]], tf.int32),
            "target_in_ids": tf.constant([[1, 5, 6, 0]], tf.int32),
        }

    def begin_decoding(self, model, inputs, settings):
        from kerastx import inference

        return inference.begin_source_decoding(model, inputs, settings)

    def encode_text(self, tokenizer, text, max_input_length):
        from kerastx import inference

        return inference.encode_source(tokenizer, text, max_input_length)

    def text_decoder(self, model, data, settings):
        from kerastx import evaluate

        return evaluate.source_decoder(self, model, data, settings)

    def attention_maps(self, model, data, split, count):
        from kerastx import evaluate

        return evaluate.attention_maps(self, model, data, split, count)

    def score_inputs(self, data, sources, targets):
        from kerastx import predict

        return predict.seq2seq_score_inputs(self, data, sources, targets)

    def parity_check(self, loaded, model, data, split, count):
        # The framework decodes the training pipeline's encoding of the sources, the
        # export the raw text, so the in-graph tokenization is checked too.
        from kerastx import export

        return export.compare_with_pipeline(self, loaded, model, data, split, count)
