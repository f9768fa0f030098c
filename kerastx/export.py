"""`kerastx export RUN_DIR`: a SavedModel that takes raw text and returns text.

Signatures (see `saved_model_cli show --all --dir RUN_DIR/export`):

- `serving_default`: `text (B,)` string -> `output (B,)` string, `score (B,)` float32,
  decoded with the run's `decoding:` settings.
- `decode`: the same plus every decoding setting as a scalar input chosen per request:
  `beam_size` (1 = greedy), `n_best`, `length_penalty`, `sampling` (bool), `temperature`,
  `top_k`, `top_p`, `seed`, `max_length` (at most the exported cache bound);
  outputs `output (B,)`, `outputs (B, N)` (n-best), `scores (B, N)`, `lengths (B, N)`.
- `decode_ids`: `source_ids (B, S)` int32 (tokens + EOS, 0-padded) and the same settings
  -> `ids (B, N, T)`, `scores (B, N)`, `lengths (B, N)`.

From Python, `loaded.translate(text, beam_size=...)` takes the settings as optional
keyword arguments with the run's defaults. Tokenization and detokenization run inside
the graph (tensorflow-text ops): a client needs `import tensorflow_text` before
`tf.saved_model.load`, and nothing from kerastx. The vocabularies and the resolved
config travel in `assets/`.

Export checks itself: N dev examples are decoded by the reloaded SavedModel and by the
framework's decoder; any difference fails the export and lists the first mismatches.
"""

from __future__ import annotations

import os
import shutil

import tensorflow as tf

from kerastx import inference
from kerastx.errors import KerastxError

EXPORT_DIR = "export"


class ExportParityError(KerastxError):
    """The exported model decodes differently from the framework."""


def _spec(dtype):
    return tf.TensorSpec([], dtype)


class TextModel(tf.Module):
    """The exported module: model, tokenizers, decoding defaults, config asset.

    Args:
        model: a trained Seq2SeqTransformer.
        source_tokenizer, target_tokenizer: kerastx.data tokenizers (tf.Modules).
        settings: dict. Default decoding settings (from the run's `decoding:`).
        max_source_length: int. Longest source (tokens, with EOS); longer input is cut.
        config_path: str. The run's config.yaml, copied into assets/.
    """

    def __init__(
        self,
        model,
        source_tokenizer,
        target_tokenizer,
        settings: dict,
        max_source_length: int,
        config_path: str,
    ):
        super().__init__(name="kerastx_text_model")
        self.model = model
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        self.defaults = dict(settings)
        self.cache_length = int(settings["max_length"])
        self.max_source_length = int(max_source_length)
        d = self.defaults
        spec = [
            tf.TensorSpec([None], tf.string),
            _spec(tf.int32),
            _spec(tf.int32),
            _spec(tf.float32),
            _spec(tf.bool),
            _spec(tf.float32),
            _spec(tf.int32),
            _spec(tf.float32),
            _spec(tf.int32),
            _spec(tf.int32),
        ]
        beam = d["beam_size"] if d["strategy"] == "beam" else 1
        n_best = d["n_best"] if d["strategy"] == "beam" else 1

        def translate(
            text,
            beam_size=beam,
            n_best=n_best,
            length_penalty=float(d["length_penalty"]),
            sampling=d["strategy"] == "sample",
            temperature=float(d["temperature"]),
            top_k=int(d["top_k"]),
            top_p=float(d["top_p"]),
            seed=int(d["seed"]),
            max_length=int(d["max_length"]),
        ):
            return self._translate(
                text,
                beam_size,
                n_best,
                length_penalty,
                sampling,
                temperature,
                top_k,
                top_p,
                seed,
                max_length,
            )

        self.translate = tf.function(translate, input_signature=spec)

        def translate_default(text):
            out = self.translate(text)
            return {"output": out["output"], "score": out["scores"][:, 0]}

        self.translate_default = tf.function(translate_default, input_signature=spec[:1])

        def decode_ids(
            source_ids,
            beam_size=beam,
            n_best=n_best,
            length_penalty=float(d["length_penalty"]),
            sampling=d["strategy"] == "sample",
            temperature=float(d["temperature"]),
            top_k=int(d["top_k"]),
            top_p=float(d["top_p"]),
            seed=int(d["seed"]),
            max_length=int(d["max_length"]),
        ):
            return self._decode_ids(
                source_ids,
                beam_size,
                n_best,
                length_penalty,
                sampling,
                temperature,
                top_k,
                top_p,
                seed,
                max_length,
            )

        self.decode_ids = tf.function(
            decode_ids, input_signature=[tf.TensorSpec([None, None], tf.int32), *spec[1:]]
        )

    def encode_source(self, text):
        """`(B,)` strings -> `(B, S)` int32 ids + EOS, as the training pipeline makes them."""
        return inference.encode_source(self.source_tokenizer, text, self.max_source_length)

    def _decode_ids(
        self,
        source_ids,
        beam_size,
        n_best,
        length_penalty,
        sampling,
        temperature,
        top_k,
        top_p,
        seed,
        max_length,
    ):
        max_length = tf.minimum(max_length, self.cache_length)
        base = {
            **self.defaults,
            "length_penalty": length_penalty,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "seed": seed,
            "max_length": self.cache_length,
        }
        inputs = {"source_ids": source_ids}
        # The per-request cap; decode_batch also applies a * source length + b.
        limit = tf.fill([tf.shape(source_ids)[0]], max_length)

        def run(strategy, **extra):
            settings = {**base, "strategy": strategy, **extra}
            result = inference.decode_batch(
                self.model, "seq2seq", inputs, settings, max_lengths=limit
            )
            ids, lengths, scores = result.ids, result.lengths, result.normalized_scores
            if ids.shape.rank == 2:
                ids, lengths, scores = ids[:, None], lengths[:, None], scores[:, None]
            return ids, lengths, scores

        def greedy():
            return run("greedy")

        def beam():
            return run("beam", beam_size=beam_size, n_best=n_best)

        def sample():
            return run("sample")

        ids, lengths, scores = tf.cond(
            sampling,
            sample,
            lambda: tf.cond(
                tf.logical_and(tf.equal(beam_size, 1), tf.equal(n_best, 1)), greedy, beam
            ),
        )
        return {"ids": ids, "lengths": lengths, "scores": scores}

    def _translate(
        self,
        text,
        beam_size,
        n_best,
        length_penalty,
        sampling,
        temperature,
        top_k,
        top_p,
        seed,
        max_length,
    ):
        source_ids = self.encode_source(text)
        out = self._decode_ids(
            source_ids,
            beam_size,
            n_best,
            length_penalty,
            sampling,
            temperature,
            top_k,
            top_p,
            seed,
            max_length,
        )
        ids = out["ids"]
        shape = tf.shape(ids)
        flat = tf.reshape(ids, [shape[0] * shape[1], shape[2]])
        texts = tf.reshape(self.target_tokenizer.detokenize(flat), shape[:2])
        return {
            "output": texts[:, 0],
            "outputs": texts,
            "scores": out["scores"],
            "lengths": out["lengths"],
        }


def export_model(model, data, cfg, output_dir: str) -> str:
    """Writes the SavedModel of a seq2seq run to `output_dir` (replacing it atomically)."""
    if cfg.model.type != "seq2seq":
        raise KerastxError(
            f"export: model type '{cfg.model.type}' is not exportable yet (seq2seq only)"
        )
    settings = inference.settings_from_config(cfg.decoding)
    module = TextModel(
        model,
        data.source_tokenizer,
        data.target_tokenizer,
        settings,
        cfg.data.max_source_length,
        os.path.join(cfg.run_dir, "config.yaml"),
    )
    tmp = output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(
        module,
        tmp,
        signatures={
            "serving_default": module.translate_default,
            "decode": module.translate,
            "decode_ids": module.decode_ids,
        },
    )
    return tmp


def parity_check(tmp_dir: str, model, data, cfg, count: int) -> int:
    """Decodes `count` dev (or test) sources both ways; raises on any difference."""
    from kerastx.evaluate import decode_split

    split = "dev" if cfg.data.dev is not None else "test"
    if count == 0 or getattr(cfg.data, split) is None:
        return 0
    settings = inference.settings_from_config(cfg.decoding)
    hyps, sources = decode_split(model, data, cfg, split, settings, max_examples=count)
    loaded = tf.saved_model.load(tmp_dir)
    outputs = []
    for start in range(0, len(sources), cfg.decoding.batch_size):
        batch = tf.constant(sources[start : start + cfg.decoding.batch_size])
        result = loaded.signatures["serving_default"](text=batch)
        outputs.extend(t.decode("utf-8") for t in result["output"].numpy())
    mismatches = [(s, h, o) for s, h, o in zip(sources, hyps, outputs) if h != o]
    if mismatches:
        shown = "; ".join(f"{s!r}: framework {h!r} != export {o!r}" for s, h, o in mismatches[:5])
        raise ExportParityError(
            f"export parity check failed on {len(mismatches)} of {len(sources)} examples: {shown}"
        )
    return len(sources)


def run(run_dir: str, output_dir: str | None = None) -> int:
    """`kerastx export RUN_DIR`: writes RUN_DIR/export (or `output_dir`), checks parity."""
    from kerastx.runs import load_run

    loaded = load_run(run_dir)
    output_dir = output_dir or os.path.join(run_dir, EXPORT_DIR)
    tmp = export_model(loaded.model, loaded.data, loaded.cfg, output_dir)
    checked = parity_check(
        tmp, loaded.model, loaded.data, loaded.cfg, loaded.cfg.export.parity_examples
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    print(f"exported {output_dir} (from {loaded.checkpoint}); parity checked on {checked} examples")
    return 0
