"""`kerastx predict` (decode text) and `kerastx score` (log-probability of pairs).

`predict` reads one example per line (a file or stdin) and writes one output per line in
input order; internally the inputs are sorted by length so each batch has little
padding. It works from a run directory (the framework's decoder) or from an exported
SavedModel directory (its `decode` or `classify` signature), with the same settings and
the same outputs. Per model type an input line is a source (seq2seq), a prompt
(decoder_lm: the output is the continuation only) or a text to classify (the output is
the label).

With `n_best > 1` (beam search) every input gives `n_best` lines
`INDEX ||| OUTPUT ||| SCORE` (INDEX = 0-based input line, SCORE = the ranking score).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

from kerastx import inference
from kerastx.errors import KerastxError


@dataclasses.dataclass
class Decoded:
    """Outputs of a list of inputs, in input order.

    Attributes:
        outputs: per input, its outputs best first (n-best; a classifier: `[label]`).
        scores: per input, the ranking score of each output (a classifier: the label's
            probability).
        probabilities: classifiers: per input, the `(C,)` class probabilities; else None.
    """

    outputs: list
    scores: list
    probabilities: list | None = None


def _read_lines(path: str | None) -> list[str]:
    if path is None:
        return [line.rstrip("\n") for line in sys.stdin]
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise KerastxError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise KerastxError(f"{path}: not valid UTF-8 (byte {err.start})") from None


def _write_lines(path: str | None, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def length_sorted_batches(lines: list[str], batch_size: int):
    """Batches of input indices, shortest inputs first (by characters, stable)."""
    order = sorted(range(len(lines)), key=lambda i: (len(lines[i]), i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _format(decoded: Decoded, n_best: int) -> list[str]:
    if n_best == 1:
        return [o[0] for o in decoded.outputs]
    return [
        f"{i} ||| {text} ||| {score:.4f}"
        for i, (texts, ss) in enumerate(zip(decoded.outputs, decoded.scores))
        for text, score in zip(texts, ss)
    ]


def _strings(values) -> list[str]:
    return [v.decode("utf-8") for v in values]


def split_texts(data, split: str, count: int) -> list[str]:
    """The first `count` distinct source texts of an evaluation split, in its order."""
    seen: dict[str, None] = {}
    for batch in data.eval_dataset(split, 256):
        for text in _strings(batch["source_text"].numpy()):
            seen.setdefault(text, None)
            if len(seen) >= count:
                return list(seen)
    return list(seen)


def decode_with_model(
    model, data, cfg, lines: list[str], settings: dict, batch_size: int, jit_compile=False
) -> Decoded:
    """Decodes (or classifies) raw lines with the framework, in length-sorted batches.

    Args:
        model: the trained model.
        data: the run's DataModule (its tokenizers and labels).
        cfg: the run's config.
        lines: list of str. Inputs.
        settings: dict from `inference.settings_from_config`.
        batch_size: int. Inputs decoded together.
        jit_compile: bool. Decode with XLA (see `inference.Decoder`).
    """
    model_type, limit = cfg.model.type, cfg.data.max_source_length
    out = Decoded([None] * len(lines), [None] * len(lines))
    if model_type == "encoder_classifier":
        names = list(data.labels.tags)
        out.probabilities = [None] * len(lines)
        logits_fn = tf.function(
            lambda ids: model({"source_ids": ids}, training=False),
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
        )
        for idx in length_sorted_batches(lines, batch_size):
            ids = inference.encode_source(
                data.source_tokenizer, tf.constant([lines[i] for i in idx]), limit
            )
            probs = tf.nn.softmax(tf.cast(logits_fn(ids), tf.float32), axis=-1).numpy()
            for row, i in enumerate(idx):
                best = int(np.argmax(probs[row]))
                out.outputs[i], out.scores[i] = [names[best]], [float(probs[row, best])]
                out.probabilities[i] = probs[row]
        return out
    decoder = inference.Decoder(model, model_type, settings, jit_compile=jit_compile)
    for idx in length_sorted_batches(lines, batch_size):
        text = tf.constant([lines[i] for i in idx])
        if model_type == "seq2seq":
            inputs = {"source_ids": inference.encode_source(data.source_tokenizer, text, limit)}
        else:
            inputs = {"prompt_ids": inference.encode_prompt(data.source_tokenizer, text, limit)}
        result = decoder(inputs)
        ids = result.ids if result.ids.shape.rank == 3 else result.ids[:, None]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[2]])
        texts = data.target_tokenizer.detokenize(flat).numpy().reshape(ids.shape[:2])
        scores = np.reshape(result.normalized_scores.numpy(), ids.shape[:2])
        for row, i in enumerate(idx):
            out.outputs[i], out.scores[i] = _strings(texts[row]), [float(s) for s in scores[row]]
    return out


def decode_with_export(
    loaded, model_type: str, lines: list[str], settings: dict, batch_size: int
) -> Decoded:
    """As `decode_with_model`, through a loaded SavedModel's `decode` or `classify`."""
    out = Decoded([None] * len(lines), [None] * len(lines))
    if model_type == "encoder_classifier":
        out.probabilities = [None] * len(lines)
    defaults = inference.request_defaults(settings)
    request = {
        name: tf.constant(defaults[name], dtype) for name, dtype in inference.REQUEST_SETTINGS
    }
    for idx in length_sorted_batches(lines, batch_size):
        text = tf.constant([lines[i] for i in idx])
        if model_type == "encoder_classifier":
            result = loaded.signatures["classify"](text=text)
            labels, scores = _strings(result["label"].numpy()), result["score"].numpy()
            probs = result["probabilities"].numpy()
            for row, i in enumerate(idx):
                out.outputs[i], out.scores[i] = [labels[row]], [float(scores[row])]
                out.probabilities[i] = probs[row]
            continue
        result = loaded.signatures["decode"](text=text, **request)
        texts, scores = result["outputs"].numpy(), result["scores"].numpy()
        for row, i in enumerate(idx):
            out.outputs[i], out.scores[i] = _strings(texts[row]), [float(s) for s in scores[row]]
    return out


def predict_lines(path: str, lines: list[str], decoding: dict | None = None) -> list[str]:
    """Decodes `lines` with a run directory or an exported SavedModel; input order kept.

    Args:
        path: str. A run directory or an export directory.
        lines: list of str.
        decoding: dict. Overrides of the `decoding:` settings (CLI flags), `batch_size`,
            and `jit_compile` (run directories: decode with XLA, see
            `inference.Decoder`; default: `decoding.jit_compile` if the config has it).

    Returns:
        The output lines (see the module docstring).
    """
    from kerastx.config import load_experiment

    decoding = dict(decoding or {})
    batch_size = decoding.pop("batch_size", None)
    jit_compile = decoding.pop("jit_compile", None)
    exported = os.path.exists(os.path.join(path, "saved_model.pb"))
    if exported:
        import tensorflow_text  # noqa: F401 - registers the tokenizer ops

        cfg, _ = load_experiment([os.path.join(path, "assets", "config.yaml")])
    else:
        from kerastx.runs import load_run

        run = load_run(path)
        cfg = run.cfg
    if cfg.model.num_conditions or cfg.model.condition_dim:
        raise KerastxError("predict: models with a condition are not supported yet")
    settings = inference.settings_from_config(cfg.decoding, **decoding)
    batch_size = batch_size or cfg.decoding.batch_size
    if exported:
        loaded = tf.saved_model.load(path)
        decoded = decode_with_export(loaded, cfg.model.type, lines, settings, batch_size)
    else:
        if jit_compile is None:
            jit_compile = cfg.decoding.jit_compile
        decoded = decode_with_model(
            run.model, run.data, cfg, lines, settings, batch_size, bool(jit_compile)
        )
    beam = settings["strategy"] == "beam" and cfg.model.type != "encoder_classifier"
    return _format(decoded, settings["n_best"] if beam else 1)


def run(
    path: str,
    input_path: str | None = None,
    output_path: str | None = None,
    decoding: dict | None = None,
) -> int:
    """`kerastx predict PATH`: decodes a file (or stdin) line by line."""
    if not os.path.isdir(path):
        raise KerastxError(f"{path}: no such run or export directory")
    lines = _read_lines(input_path)
    _write_lines(output_path, predict_lines(path, lines, decoding))
    return 0


def _target_pieces(tokenizer, texts: list[str]) -> tf.RaggedTensor:
    return tf.cast(tokenizer.tokenize(tf.constant(texts, tf.string)), tf.int32)


def run_score(path: str, source: str, target: str, output_path: str | None = None) -> int:
    """`kerastx score RUN_DIR`: log-probability of each target given its source.

    seq2seq: `log p(target | source)`; decoder_lm: `log p(target | source)` with the
    source line as the prompt (an empty source line scores the target alone). Writes one
    line per pair: the summed log-probability (natural log, EOS included) and the number
    of scored target tokens, tab-separated.
    """
    from kerastx.runs import load_run

    sources, targets = _read_lines(source), _read_lines(target)
    if len(sources) != len(targets):
        raise KerastxError(f"{source} has {len(sources)} lines but {target} has {len(targets)}")
    run_ = load_run(path)
    cfg, data, model = run_.cfg, run_.data, run_.model
    if cfg.model.type not in ("seq2seq", "decoder_lm"):
        raise KerastxError(f"score: a model of type '{cfg.model.type}' has no targets to score")

    @tf.function(reduce_retracing=True)
    def logprob(inputs, target_out, scored):
        logits = model(inputs, training=False)  # (B, T, V)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        picked = tf.gather(logp, target_out, axis=-1, batch_dims=2)  # (B, T)
        mask = tf.cast(scored, tf.float32)
        return tf.reduce_sum(picked * mask, axis=1), tf.reduce_sum(mask, axis=1)

    lines = []
    step = cfg.decoding.batch_size
    for start in range(0, len(sources), step):
        src, tgt = sources[start : start + step], targets[start : start + step]
        pieces = _target_pieces(data.target_tokenizer, tgt)
        ones = tf.ones([len(tgt), 1], tf.int32)
        bos, eos = tf.RaggedTensor.from_tensor(ones), tf.RaggedTensor.from_tensor(ones * 2)
        if cfg.model.type == "seq2seq":
            limit = cfg.data.max_source_length
            source_ids = inference.encode_source(data.source_tokenizer, tf.constant(src), limit)
            target_in = tf.concat([bos, pieces], axis=1).to_tensor()
            inputs = {"source_ids": source_ids, "target_in_ids": target_in}
            target_out = tf.concat([pieces, eos], axis=1)
            scored = tf.ones_like(target_out, tf.bool).to_tensor(False)
        else:  # BOS + prompt + target -> prompt + target + EOS; only target + EOS scored
            prompt = _target_pieces(data.source_tokenizer, src)
            inputs = {"token_ids": tf.concat([bos, prompt, pieces], axis=1).to_tensor()}
            target_out = tf.concat([prompt, pieces, eos], axis=1)
            scored = tf.concat(
                [
                    tf.zeros_like(prompt, tf.bool),
                    tf.ones_like(tf.concat([pieces, eos], 1), tf.bool),
                ],
                axis=1,
            ).to_tensor(False)
        total, count = logprob(inputs, target_out.to_tensor(), scored)
        lines.extend(f"{t:.6f}\t{int(c)}" for t, c in zip(total.numpy(), count.numpy()))
    _write_lines(output_path, lines)
    return 0
