"""What the text-generating families share: cached decoding, predict, score, export.

`Seq2SeqTask` and `LanguageModelTask` decode with a key/value cache
(`kerastx.inference`); they differ in how decoding starts (an encoded source, or a
prompt fed as forced tokens) and in how a text becomes the decoder's input.
"""

from __future__ import annotations

import os
from typing import ClassVar

from kerastx.tasks.base import Task


class GenerationTask(Task):
    """A family whose output is text decoded token by token.

    Class attributes:
        decode_input_key: the id tensor the decoder reads (`source_ids`, `prompt_ids`).
        filler_id: the one-token input of filler rows (XLA batch padding).
    """

    decode_input_key: ClassVar[str] = ""
    filler_id: ClassVar[int] = 0

    # -- decoding hooks (called by kerastx.inference.decode_batch) -----------------------

    def begin_decoding(self, model, inputs: dict, settings: dict):
        """The `inference.DecodeStart` (cache, start ids, bounds) of a decoder batch."""
        raise NotImplementedError

    def end_decoding(self, result, start, static_shapes: bool):
        """The decoded result as the caller sees it (e.g. without a forced prompt)."""
        del start, static_shapes
        return result

    def encode_text(self, tokenizer, text, max_input_length: int):
        """Raw `(B,)` strings -> the `decode_input_key` ids (in-graph; also exported)."""
        raise NotImplementedError

    # -- predict ---------------------------------------------------------------------------

    def outputs_per_input(self, settings: dict) -> int:
        return int(settings["n_best"]) if settings["strategy"] == "beam" else 1

    def predict(self, model, data, lines, settings, batch_size, jit=False):
        from kerastx import predict

        return predict.generate_lines(self, model, data, lines, settings, batch_size, jit)

    def predict_exported(self, loaded, lines, settings, batch_size):
        from kerastx import predict

        return predict.generate_with_export(loaded, lines, settings, batch_size)

    # -- score -----------------------------------------------------------------------------

    def score_inputs(self, data, sources: list[str], targets: list[str]):
        """`(model inputs, target_out ragged ids, scored ragged bools)` of scored pairs."""
        raise NotImplementedError

    def score(self, model, data, sources, targets):
        from kerastx import predict

        return predict.score_pairs(self, model, data, sources, targets)

    # -- export ----------------------------------------------------------------------------

    def export_module(self, model, data):
        from kerastx import export, inference

        return export.TextExport(
            model,
            self,
            data.source_tokenizer,
            data.target_tokenizer,
            inference.settings_from_config(self.cfg.decoding),
            self.cfg.data.max_source_length,
            os.path.join(self.cfg.run_dir, "config.yaml"),
            conditions=getattr(data, "conditions", None),
        )

    def parity_texts(self, data, split: str, count: int) -> list[str]:
        """The raw inputs the export's parity check decodes both ways."""
        from kerastx import predict

        return predict.split_texts(data, split, count)

    def parity_check(self, loaded, model, data, split, count):
        from kerastx import export

        return export.compare_predictions(
            self, loaded, model, data, self.parity_texts(data, split, count)
        )
