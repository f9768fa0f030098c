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
import sys

import numpy as np
import tensorflow as tf

from kerastx import inference
from kerastx.errors import KerastxError
from kerastx.special_ids import BOS_ID, EOS_ID


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


def read_lines(path: str | None) -> list[str]:
    if path is None:
        return [line.rstrip("\n") for line in sys.stdin]
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise KerastxError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise KerastxError(f"{path}: not valid UTF-8 (byte {err.start})") from None


def write_lines(path: str | None, lines: list[str]) -> None:
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


def classify_lines(model, data, cfg, lines: list[str], batch_size: int) -> Decoded:
    """A classifier's `predict`: the label of each line, with its probability."""
    limit = cfg.data.max_source_length
    names = list(data.labels.tags)
    out = Decoded([None] * len(lines), [None] * len(lines), [None] * len(lines))
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


def generate_lines(
    task, model, data, lines: list[str], settings: dict, batch_size: int, jit=False
) -> Decoded:
    """A generation task's `predict`: the cached decoder on the task's encoding of each
    line (a seq2seq source, an LM prompt), in length-sorted batches."""
    limit = task.cfg.data.max_source_length
    out = Decoded([None] * len(lines), [None] * len(lines))
    decoder = inference.Decoder(model, task, settings, jit_compile=jit)
    for idx in length_sorted_batches(lines, batch_size):
        text = tf.constant([lines[i] for i in idx])
        inputs = {task.decode_input_key: task.encode_text(data.source_tokenizer, text, limit)}
        result = decoder(inputs)
        ids = result.ids if result.ids.shape.rank == 3 else result.ids[:, None]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[2]])
        texts = data.target_tokenizer.detokenize(flat).numpy().reshape(ids.shape[:2])
        scores = np.reshape(result.normalized_scores.numpy(), ids.shape[:2])
        for row, i in enumerate(idx):
            out.outputs[i], out.scores[i] = _strings(texts[row]), [float(s) for s in scores[row]]
    return out


def classify_with_export(loaded, lines: list[str], batch_size: int) -> Decoded:
    """A classifier's `predict_exported`: the `classify` signature."""
    out = Decoded([None] * len(lines), [None] * len(lines), [None] * len(lines))
    for idx in length_sorted_batches(lines, batch_size):
        result = loaded.signatures["classify"](text=tf.constant([lines[i] for i in idx]))
        labels, scores = _strings(result["label"].numpy()), result["score"].numpy()
        probs = result["probabilities"].numpy()
        for row, i in enumerate(idx):
            out.outputs[i], out.scores[i] = [labels[row]], [float(scores[row])]
            out.probabilities[i] = probs[row]
    return out


def generate_with_export(loaded, lines: list[str], settings: dict, batch_size: int) -> Decoded:
    """A generation task's `predict_exported`: the `decode` signature with `settings`."""
    out = Decoded([None] * len(lines), [None] * len(lines))
    defaults = inference.request_defaults(settings)
    request = {
        name: tf.constant(defaults[name], dtype) for name, dtype in inference.REQUEST_SETTINGS
    }
    for idx in length_sorted_batches(lines, batch_size):
        result = loaded.signatures["decode"](text=tf.constant([lines[i] for i in idx]), **request)
        texts, scores = result["outputs"].numpy(), result["scores"].numpy()
        for row, i in enumerate(idx):
            out.outputs[i], out.scores[i] = _strings(texts[row]), [float(s) for s in scores[row]]
    return out


def format_outputs(decoded: Decoded, n_best: int) -> list[str]:
    """The output lines: one per input, or `INDEX ||| OUTPUT ||| SCORE` n-best lines."""
    return _format(decoded, n_best)


def _target_pieces(tokenizer, texts: list[str]) -> tf.RaggedTensor:
    return tf.cast(tokenizer.tokenize(tf.constant(texts, tf.string)), tf.int32)


def seq2seq_score_inputs(task, data, sources: list[str], targets: list[str]):
    """Scored pairs of an encoder-decoder: `log p(target | source)`."""
    pieces = _target_pieces(data.target_tokenizer, targets)
    bos, eos = _specials(len(targets))
    limit = task.cfg.data.max_source_length
    source_ids = inference.encode_source(data.source_tokenizer, tf.constant(sources), limit)
    target_in = tf.concat([bos, pieces], axis=1).to_tensor()
    target_out = tf.concat([pieces, eos], axis=1)
    scored = tf.ones_like(target_out, tf.bool).to_tensor(False)
    return {"source_ids": source_ids, "target_in_ids": target_in}, target_out, scored


def lm_score_inputs(task, data, sources: list[str], targets: list[str]):
    """Scored pairs of an LM: BOS + prompt + target -> prompt + target + EOS; only
    target + EOS scored (an empty source scores the target alone)."""
    del task
    pieces = _target_pieces(data.target_tokenizer, targets)
    bos, eos = _specials(len(targets))
    prompt = _target_pieces(data.source_tokenizer, sources)
    inputs = {"token_ids": tf.concat([bos, prompt, pieces], axis=1).to_tensor()}
    target_out = tf.concat([prompt, pieces, eos], axis=1)
    scored = tf.concat(
        [tf.zeros_like(prompt, tf.bool), tf.ones_like(tf.concat([pieces, eos], 1), tf.bool)],
        axis=1,
    ).to_tensor(False)
    return inputs, target_out, scored


def _specials(count: int):
    ones = tf.ones([count, 1], tf.int32)
    return (
        tf.RaggedTensor.from_tensor(ones * BOS_ID),
        tf.RaggedTensor.from_tensor(ones * EOS_ID),
    )


def score_pairs(task, model, data, sources: list[str], targets: list[str]) -> list[str]:
    """`kerastx score` lines: the summed log-probability of each target (natural log,
    EOS included) and the number of scored tokens, tab-separated."""

    @tf.function(reduce_retracing=True)
    def logprob(inputs, target_out, scored):
        logits = model(inputs, training=False)  # (B, T, V)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        picked = tf.gather(logp, target_out, axis=-1, batch_dims=2)  # (B, T)
        mask = tf.cast(scored, tf.float32)
        return tf.reduce_sum(picked * mask, axis=1), tf.reduce_sum(mask, axis=1)

    lines = []
    step = task.cfg.decoding.batch_size
    for start in range(0, len(sources), step):
        inputs, target_out, scored = task.score_inputs(
            data, sources[start : start + step], targets[start : start + step]
        )
        total, count = logprob(inputs, target_out.to_tensor(), scored)
        lines.extend(f"{t:.6f}\t{int(c)}" for t, c in zip(total.numpy(), count.numpy()))
    return lines
