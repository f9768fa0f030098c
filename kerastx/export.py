"""`kerastx export RUN_DIR`: a SavedModel that takes raw text and returns text.

Signatures (`saved_model_cli show --all --dir RUN_DIR/export`) of seq2seq and
decoder_lm models; for a decoder_lm `text` is a prompt and every output is its
continuation only (the prompt is not repeated):

- `serving_default`: `text (B,)` string -> `output (B,)` string, `score (B,)` float32,
  decoded with the run's `decoding:` settings.
- `decode`: `text (B,)` and every per-request setting as a scalar input: `beam_size`
  int32 (1 = greedy), `n_best` int32, `length_penalty` float32, `sampling` bool,
  `temperature` float32, `top_k` int32, `top_p` float32, `seed` int32, `max_length` int32
  (capped by the exported `decoding.max_length`) -> `output (B,)` (the best),
  `outputs (B, N)` (n-best), `scores (B, N)` (the ranking score: log-probability,
  divided by the GNMT length penalty in beam search), `log_probs (B, N)` (summed
  log-probability), `lengths (B, N)` int32 (tokens, EOS included).
- `decode_ids`: `source_ids (B, S)` int32 (tokens + EOS, 0-padded) - for a decoder_lm
  `prompt_ids (B, P)` (BOS + tokens, 0-padded) - and the same settings -> `ids (B, N, T)`,
  `scores`, `log_probs`, `lengths`.

A model with a condition takes it as one more input of each of the three signatures,
`condition`: a `(B,)` string tensor of tags (`model.num_conditions`; mapped in the graph
to ids with the run's `conditions.txt`, which travels in `assets/`; a tag not in it fails
the call with an InvalidArgumentError naming the known tags; `condition_tags()` returns
them) or a `(B, condition_dim)` float32 tensor (`model.condition_dim`; NaN or inf fails
the call). In Python it is the second argument: `loaded.translate(text, condition)`.

EncoderClassifier: `serving_default` and `classify`: `text (B,)` -> `label (B,)` string,
`score (B,)` (its probability), `probabilities (B, C)` float32, `classes (B, C)` string
(the label of each column). A classifier with a condition cannot be exported yet.

From Python, `loaded.translate(text, beam_size=4)` takes the settings as optional
keyword arguments (default: the run's `decoding:` section); `loaded.decode_ids` too.
Tokenization and detokenization run inside the graph (tensorflow-text ops): a client
needs `import tensorflow_text` before `tf.saved_model.load`, and nothing from kerastx.
The vocabularies and the resolved config (`config.yaml`) travel in `assets/`. The
SavedModel holds only TensorFlow state: variables, lookup tables, assets and
`tf.function`s (no Keras model object).

Export checks itself: dev examples are decoded by the reloaded SavedModel and by the
framework; any difference fails the export and lists the first mismatches.
"""

from __future__ import annotations

import inspect
import os
import shutil

import numpy as np
import tensorflow as tf

from kerastx import inference
from kerastx.errors import KerastxError

EXPORT_DIR = "export"
_STRINGS = tf.TensorSpec([None], tf.string)
_IDS = tf.TensorSpec([None, None], tf.int32)


class ExportParityError(KerastxError):
    """The exported model decodes differently from the framework."""


def _with_settings(impl, leading: list[tuple[str, tf.TensorSpec]], defaults: dict):
    """`impl(*leading, **settings)` as a `tf.function` whose per-request settings are
    optional keyword arguments for Python callers and inputs of its signature.

    Args:
        impl: callable `(*leading, **settings) -> dict of tensors`.
        leading: list of (name, tf.TensorSpec). The batch inputs (the text or ids, and
            the condition of a conditioned model), required, in this order.
        defaults: dict. Python defaults of `inference.REQUEST_SETTINGS`.
    """
    param = inspect.Parameter
    params = [param(name, param.POSITIONAL_OR_KEYWORD) for name, _ in leading]
    params += [
        param(name, param.POSITIONAL_OR_KEYWORD, default=defaults[name])
        for name, _ in inference.REQUEST_SETTINGS
    ]
    signature = inspect.Signature(params)

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        request = dict(bound.arguments)
        return impl(*(request.pop(name) for name, _ in leading), **request)

    function.__signature__ = signature  # what tf.function reads for names and defaults
    function.__name__ = impl.__name__
    specs = [spec for _, spec in leading] + [
        tf.TensorSpec([], dtype) for _, dtype in inference.REQUEST_SETTINGS
    ]
    return tf.function(function, input_signature=specs)


class TextExport(tf.Module):
    """The exported seq2seq or decoder_lm: variables, tokenizers, config, functions.

    Args:
        model: a trained `Seq2SeqTransformer` or `DecoderLM` (only its variables are
            saved; the functions are traced from it).
        task: its generation task (input key, in-graph encoding, decoding start).
        source_tokenizer, target_tokenizer: kerastx.data tokenizers (tf.Modules); for a
            decoder_lm the same one.
        settings: dict. Default decoding settings; `max_length` is the cache size.
        max_input_length: int. seq2seq: longest source (tokens with EOS); decoder_lm:
            longest prompt (tokens, BOS not counted). Longer input is cut.
        config_path: str. The run's config.yaml, copied into assets/.
        conditions: TagVocabulary or None. The run's condition tags (a model with
            `num_conditions`); None reads `vocab/conditions.txt` next to `config_path`.
    """

    def __init__(
        self,
        model,
        task,
        source_tokenizer,
        target_tokenizer,
        settings: dict,
        max_input_length: int,
        config_path: str,
        conditions=None,
    ):
        super().__init__(name="kerastx_export")
        self.model_variables = list(model.variables)
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        settings = dict(settings)
        defaults = inference.request_defaults(settings)
        key = task.decode_input_key
        encode = task.encode_text
        condition_spec = self._condition_input(model, conditions, config_path)
        extra = [("condition", condition_spec)] if condition_spec is not None else []

        def decode_ids(ids, *condition, **request):
            inputs = {key: ids}
            if condition:
                inputs["condition"] = self._model_condition(condition[0])
            result = inference.decode_request(model, task, inputs, request, settings)
            return {
                "ids": result.ids,
                "scores": result.normalized_scores,
                "log_probs": result.scores,
                "lengths": result.lengths,
            }

        # Each function calls the one below it, so the decoding graph is traced (and
        # stored in the SavedModel) once.
        def translate(text, *condition, **request):
            ids = encode(source_tokenizer, text, max_input_length)
            out = self.decode_ids(ids, *condition, **request)
            ids = out.pop("ids")  # (B, N, T)
            shape = tf.shape(ids)
            flat = tf.reshape(ids, [shape[0] * shape[1], shape[2]])
            texts = tf.reshape(target_tokenizer.detokenize(flat), shape[:2])  # (B, N)
            return {"output": texts[:, 0], "outputs": texts, **out}

        def translate_default(text, *condition):
            request = {
                name: tf.constant(defaults[name], dtype)
                for name, dtype in inference.REQUEST_SETTINGS
            }
            out = self.translate(text, *condition, **request)
            return {"output": out["output"], "score": out["scores"][:, 0]}

        decode_ids.__name__ = "decode_ids"
        translate.__name__ = "translate"
        self.decode_ids = _with_settings(decode_ids, [(key, _IDS), *extra], defaults)
        self.translate = _with_settings(translate, [("text", _STRINGS), *extra], defaults)
        if extra:  # named arguments: the signature's input names

            def serving_default(text, condition):
                return translate_default(text, condition)

        else:

            def serving_default(text):
                return translate_default(text)

        self.translate_default = tf.function(
            serving_default, input_signature=[_STRINGS] + [spec for _, spec in extra]
        )

    def _condition_input(self, model, conditions, config_path: str):
        """The signature spec of the model's condition (None without one); keeps the tag
        vocabulary (an asset) and `condition_tags()` for tag conditions."""
        self.condition_dim = int(getattr(model, "condition_dim", 0) or 0)
        if getattr(model, "num_conditions", 0):
            if conditions is None:
                from kerastx.data.tokenizers import TagVocabulary

                path = os.path.join(os.path.dirname(config_path), "vocab", "conditions.txt")
                conditions = TagVocabulary(path, name="conditions")
            self.conditions = conditions
            tags = tf.constant(list(conditions.tags), tf.string)
            self.condition_tags = tf.function(lambda: tags, input_signature=[])
            return _STRINGS
        if self.condition_dim:
            return tf.TensorSpec([None, self.condition_dim], tf.float32)
        return None

    def _model_condition(self, condition):
        """A signature's condition -> the model's: tags -> `(B,)` int32 ids (an unknown
        tag fails with the known tags), vectors -> `(B, C)` float32 (checked finite)."""
        if self.condition_dim:
            return tf.debugging.assert_all_finite(
                condition, "condition: a condition vector holds NaN or inf"
            )
        ids = self.conditions.lookup(condition)
        known = ", ".join(self.conditions.tags)
        check = tf.debugging.Assert(
            tf.reduce_all(ids >= 0),
            [
                f"condition: a tag not in the run's conditions.txt (tags: {known}); got:",
                tf.boolean_mask(condition, ids < 0),
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def signatures(self) -> dict:
        return {
            "serving_default": self.translate_default,
            "decode": self.translate,
            "decode_ids": self.decode_ids,
        }


class ClassifierExport(tf.Module):
    """The exported EncoderClassifier: text in, label and probabilities out.

    Args:
        model: a trained `EncoderClassifier`.
        tokenizer: the source tokenizer.
        labels: TagVocabulary of the class labels (column order of `probabilities`).
        max_input_length: int. Longest input (tokens with EOS); longer input is cut.
        config_path: str. The run's config.yaml, copied into assets/.
    """

    def __init__(self, model, tokenizer, labels, max_input_length: int, config_path: str):
        super().__init__(name="kerastx_export")
        if getattr(model, "num_conditions", 0) or getattr(model, "condition_dim", 0):
            raise KerastxError(
                "export: classifiers with a condition (model.num_conditions/condition_dim) "
                "cannot be exported yet"
            )
        self.model_variables = list(model.variables)
        self.source_tokenizer = tokenizer
        self.labels = labels
        self.config_file = tf.saved_model.Asset(config_path)
        num_classes = len(labels)

        def classify(text):
            source_ids = inference.encode_source(tokenizer, text, max_input_length)
            logits = model({"source_ids": source_ids}, training=False)  # (B, C)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            best = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            names = labels.names(tf.range(num_classes))  # (C,)
            return {
                "label": tf.gather(names, best),
                "score": tf.reduce_max(probabilities, axis=-1),
                "probabilities": probabilities,
                "classes": tf.tile(names[None, :], [tf.shape(text)[0], 1]),
            }

        self.classify = tf.function(classify, input_signature=[_STRINGS])

    def signatures(self) -> dict:
        return {"serving_default": self.classify, "classify": self.classify}


def build_module(task, model, data) -> tf.Module:
    """The export module of a run (any family; a condition is a signature input)."""
    return task.export_module(model, data)


def export_model(task, model, data, output_dir: str) -> str:
    """Writes the SavedModel of a run next to `output_dir` (`output_dir + ".tmp"`).

    Returns:
        The temporary directory; `run` moves it to `output_dir` after the parity check.
    """
    module = build_module(task, model, data)
    tmp = output_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # Saving the module (a list of variables, not the Keras model) emits no "renamed"
    # messages: every signature input name is already a valid SavedModel name.
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    return tmp


def _raise_mismatches(sources, ours, theirs) -> None:
    mismatches = [(s, h, o) for s, h, o in zip(sources, ours, theirs) if h != o]
    if mismatches:
        shown = "; ".join(f"{s!r}: framework {h!r} != export {o!r}" for s, h, o in mismatches[:5])
        raise ExportParityError(
            f"export parity check failed on {len(mismatches)} of {len(sources)} examples: {shown}"
        )


def compare_with_pipeline(task, loaded, model, data, split: str, count: int) -> int:
    """Parity of an encoder-decoder: the framework decodes the training pipeline's
    encoding of the sources (`evaluate.decode_split`), the SavedModel the raw text
    (`serving_default`), so the in-graph tokenization is checked too; a conditioned
    model gets each example's condition both ways (the tag mapped in the graph).

    Returns:
        The number of examples checked.
    """
    from kerastx import evaluate, predict

    settings = inference.settings_from_config(task.cfg.decoding)
    decode = task.text_decoder(model, data, settings)
    hyps, sources = evaluate.decode_split(task, data, split, decode, max_examples=count)
    # With a condition the sources are `CONDITION<TAB>TEXT` lines: each example's own
    # condition is fed to the export.
    condition, texts = predict.export_conditions(loaded, sources)
    batch_size = task.cfg.decoding.batch_size
    outputs = []
    for start in range(0, len(texts), batch_size):
        request = {"text": tf.constant(texts[start : start + batch_size])}
        if condition is not None:
            idx = list(range(start, min(start + batch_size, len(texts))))
            request["condition"] = predict.export_condition_batch(condition, idx)
        result = loaded.signatures["serving_default"](**request)
        outputs.extend(t.decode("utf-8") for t in result["output"].numpy())
    _raise_mismatches(sources, hyps, outputs)
    return len(sources)


def compare_predictions(task, loaded, model, data, texts: list[str]) -> int:
    """Parity through `predict`'s two paths (framework and SavedModel) on raw texts:
    equal strings, and class probabilities (classifiers) within 1e-4.

    Returns:
        The number of examples checked.
    """
    settings = inference.settings_from_config(task.cfg.decoding)
    batch_size = task.cfg.decoding.batch_size
    ours = task.predict(model, data, texts, settings, batch_size)
    theirs = task.predict_exported(loaded, texts, settings, batch_size)
    _raise_mismatches(texts, [o[0] for o in ours.outputs], [o[0] for o in theirs.outputs])
    if ours.probabilities:
        gap = float(
            np.max(
                np.abs(np.asarray(ours.probabilities) - np.asarray(theirs.probabilities)),
                initial=0.0,
            )
        )
        if gap > 1e-4:
            raise ExportParityError(
                f"export parity check failed: class probabilities differ by up to {gap:.2e}"
            )
    return len(texts)


def parity_check(tmp_dir: str, task, model, data, count: int) -> int:
    """Decodes `count` dev (or test) examples with the reloaded export and the framework
    (the task's `parity_check`); raises `ExportParityError` on any difference.

    Returns:
        The number of examples checked.
    """
    cfg = task.cfg
    split = "dev" if cfg.data.dev is not None else "test"
    if count == 0 or getattr(cfg.data, split) is None:
        return 0
    return task.parity_check(tf.saved_model.load(tmp_dir), model, data, split, count)


def export_run(task, model, data, checkpoint: str, output_dir: str) -> str:
    """Writes `output_dir` (after the parity check passed; a failed check leaves the
    previous export in place); returns `output_dir`."""
    tmp = export_model(task, model, data, output_dir)
    try:
        checked = parity_check(tmp, task, model, data, task.cfg.export.parity_examples)
    except ExportParityError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(tmp, output_dir)
    print(f"exported {output_dir} (from {checkpoint}); parity checked on {checked} examples")
    return output_dir
