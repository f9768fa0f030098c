"""Decoder-only language models: next-token prediction, prompt continuation."""

from __future__ import annotations

from kerastx import sizing
from kerastx.metrics import TEXT_LOSS_METRICS
from kerastx.special_ids import BOS_ID
from kerastx.tasks.base import TRANSFORMER_MODEL_KEYS
from kerastx.tasks.generation import GenerationTask


def _prompt(text: str) -> str:
    """A parity-check prompt: the first half of a dev text's words (at least one)."""
    words = text.split()
    return " ".join(words[: max(1, len(words) // 2)])


class LanguageModelTask(GenerationTask):
    """A causal decoder over one text (`DecoderLM`); predict continues prompts.

    The text is the corpus's *source* side (a `text` file's lines, a parallel corpus's
    source file, a TSV/TFRecord `source_column`, ...), with the source tokenizer and
    `max_source_length`.
    """

    fields = ("source",)
    target_vocabulary = "source"
    layout = {"token_ids": ("source", "bos"), "target_out_ids": ("source", "eos")}
    input_keys = ("token_ids",)
    label_key = "target_out_ids"
    target_key = "target_out_ids"
    model_keys = TRANSFORMER_MODEL_KEYS + ("num_layers", "tie_embeddings")
    corpus_types = (
        "text",
        "tsv",
        "tfrecord",
        "synthetic",
        "parallel",
        "cmudict",
        "gettext",
        "stdlib",
    )
    decode_input_key = "prompt_ids"
    filler_id = BOS_ID

    @classmethod
    def metric_names(cls, cfg):
        # The labels are the text's tokens: its bits per byte follows from the loss pass.
        return super().metric_names(cfg) + TEXT_LOSS_METRICS

    @classmethod
    def check_config(cls, cfg, fail):
        # No token count exceeds the UTF-8 byte count (bytes: equal; chars, words and
        # SentencePiece pieces hold at least one byte), so a chunk of `chunk_bytes`
        # plus its EOS fits and no held-out text is cut (bits_per_byte counts it all).
        d = cfg.data
        corpora = [(("data", "train", i), c) for i, c in enumerate(d.train)]
        corpora += [(("data", "dev"), d.dev), (("data", "test"), d.test)]
        for path, corpus in corpora:
            if getattr(corpus, "type", None) != "stdlib":
                continue
            if d.max_source_length < corpus.chunk_bytes + 1:
                fail(
                    ("data", "max_source_length"),
                    f"must be at least chunk_bytes + 1 = {corpus.chunk_bytes + 1} (a "
                    f"stdlib chunk of {corpus.chunk_bytes} bytes and its EOS); got "
                    f"{d.max_source_length}",
                    (*path, "chunk_bytes"),
                )
                return

    @classmethod
    def parameter_count(cls, model, sizes):
        return sizing.decoder_only(model, sizes.source_vocab)

    def build_model(self, data):
        from kerastx.models import DecoderLM

        return DecoderLM(vocab_size=data.source_tokenizer.vocab_size, **self.model_arguments())

    def example_inputs(self):
        import tensorflow as tf

        return {"token_ids": tf.constant([[1, 5, 6, 0]], tf.int32)}

    def begin_decoding(self, model, inputs, settings):
        from kerastx import inference

        return inference.begin_prompt_decoding(model, inputs, settings)

    def end_decoding(self, result, start, static_shapes):
        from kerastx import inference

        return inference.drop_prefix(result, start.extra["prefix_lengths"], static_shapes)

    def encode_text(self, tokenizer, text, max_input_length):
        from kerastx import inference

        return inference.encode_prompt(tokenizer, text, max_input_length)

    def input_tokens_kept(self):
        # A prompt keeps `max_source_length` tokens after its BOS (`encode_prompt`).
        return self.cfg.data.max_source_length

    def score_inputs(self, data, sources, targets):
        from kerastx import predict

        return predict.lm_score_inputs(self, data, sources, targets)

    def parity_texts(self, data, split, count):
        # Prompts: the first half of the words of dev texts (the output continues them).
        texts = super().parity_texts(data, split, count)
        return list(dict.fromkeys(_prompt(t) for t in texts))
