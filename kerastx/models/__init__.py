"""kerastx models: `Seq2SeqTransformer`, `DecoderLM`, `EncoderClassifier`.

Each takes a dict of int32 tensors (padding id 0) and returns float32 logits; the
constructor arguments equal the YAML `model:` keys (plus the data-given sizes).
"""

from kerastx.models.decoder_lm import DecoderLM
from kerastx.models.encoder_classifier import EncoderClassifier
from kerastx.models.seq2seq import Seq2SeqTransformer

__all__ = ["DecoderLM", "EncoderClassifier", "Seq2SeqTransformer"]
