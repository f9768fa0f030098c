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

A model with a condition (`model.num_conditions` tags or a `model.condition_dim` vector)
reads `CONDITION<TAB>TEXT` lines: the tag (one of the run's `conditions.txt`), or the
vector's `condition_dim` numbers separated by spaces, a tab, then the text (the format of
`kerastx.data.conditions`; a line without a tab, an unknown tag or a bad vector is refused
with its line number). The same lines work for a run and for its export.

Input is UTF-8 text, from a file or stdin alike (`read_lines`). An input longer than the
model takes (`data.max_source_length`; the task's `input_tokens_kept`) is cut to it and
counted, one warning line for all (`long_lines`, `check_long_inputs`), or refused under
`decoding.long_inputs: error`; the number of output lines never changes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import numpy as np
import tensorflow as tf

from kerastx import inference
from kerastx.data import conditions as conditions_lib
from kerastx.data.textio import split_lines
from kerastx.errors import KerastxError
from kerastx.special_ids import BOS_ID, EOS_ID

log = logging.getLogger("kerastx")
SHOWN_LINES = 5  # line numbers a long-input message lists


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
    """The lines of a UTF-8 file, or of stdin (`path` None), read the same way.

    Lines end at `\n` only (a trailing `\r` and a byte order mark are removed, as for
    data files), so there is one output per line a text editor shows.

    Raises:
        KerastxError: the file is missing or a directory, or the text is not UTF-8
            (naming the line and column).
    """
    name = "<stdin>" if path is None else path
    if path is None:
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KerastxError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise KerastxError(f"{path}: is a directory, expected a file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise KerastxError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column "
            f"{column}); give UTF-8 text"
        ) from None
    return split_lines(text)


def write_lines(path: str | None, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise KerastxError(
            f"{path}: cannot write the output ({err.strerror or err}); make it writable or "
            f"choose another --output"
        ) from None


def long_lines(tokenize, lines: list[str], kept: int, batch_size: int = 1024) -> list[int]:
    """Indices of the lines with more than `kept` tokens (the ones an encoding cuts).

    Args:
        tokenize: `(B,)` strings -> ragged ids: a run's source tokenizer's `tokenize`, or
            an exported model's `source_tokenizer.tokenize` (the same function, saved).
        lines: list of str.
        kept: int. Tokens an input keeps (`Task.input_tokens_kept`).
        batch_size: int. Lines tokenized together.
    """
    out = []
    for start in range(0, len(lines), batch_size):
        ids = tokenize(tf.constant(lines[start : start + batch_size], tf.string))
        lengths = ids.row_lengths().numpy()
        out.extend(start + int(i) for i in np.flatnonzero(lengths > kept))
    return out


def _line_numbers(indices: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:SHOWN_LINES])
    more = ", ..." if len(indices) > SHOWN_LINES else ""
    return f"line{'s' if len(indices) > 1 else ''} {shown}{more}"


def check_long_inputs(
    long: list[int], total: int, limit: int, policy: str, name: str | None, what: str = "inputs"
) -> None:
    """Reports the inputs that are cut: one warning line, or an error under `error`.

    Args:
        long: list of int. 0-based indices of the long lines (`long_lines`).
        total: int. Number of lines.
        limit: int. `data.max_source_length`.
        policy: str. `decoding.long_inputs`: "truncate" or "error".
        name: str or None. The file the lines come from (None: a Python list).
        what: str. What the lines are, in the message ("inputs", "sources").

    Raises:
        KerastxError: `policy` is "error" and a line is too long.
    """
    if not long:
        return
    lines = _line_numbers(long)
    if policy == "error":
        at = f"{name}:{long[0] + 1}" if name else f"input line {long[0] + 1}"
        raise KerastxError(
            f"{at}: longer than data.max_source_length={limit} tokens "
            f"(decoding.long_inputs: error; {len(long)} of {total} {what}: {lines}); "
            f"shorten them, or let them be cut with --long-inputs truncate"
        )
    log.warning(
        "%d of %d %s were longer than data.max_source_length=%d tokens and were cut to it (%s)",
        len(long),
        total,
        what,
        limit,
        lines,
    )


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


def split_conditions(lines: list[str], dim: int, tags, name: str | None = None):
    """Conditioned input lines `CONDITION<TAB>TEXT` -> `(conditions, texts)`, checked.

    Args:
        lines: list of str.
        dim: int. > 0: the condition is a vector of `dim` numbers; 0: a tag.
        tags: list of str or None. The known tags (checked when given).
        name: str or None. The file the lines come from (named in messages).

    Returns:
        `(conditions, texts)`: tags (str) or `(dim,)` float32 vectors, and the texts.

    Raises:
        KerastxError: a line without a tab, an unknown tag or a bad vector (its line).
    """
    out, texts = [], []
    for n, line in enumerate(lines):
        at = f"{name}:{n + 1}" if name else f"input line {n + 1}"
        try:
            condition, text = conditions_lib.split_line(line)
        except ValueError:
            raise KerastxError(
                f"{at}: the model takes a condition; give 'CONDITION<TAB>TEXT' lines "
                f"(the {'vector' if dim else 'tag'}, a tab, the text); found no tab"
            ) from None
        if dim:
            problem = conditions_lib.vector_problem(condition, dim)
            if problem is not None:
                raise KerastxError(f"{at}: condition {condition!r}: {problem}")
            out.append(np.asarray([float(v) for v in condition.split()], np.float32))
        else:
            if tags is not None and condition not in tags:
                raise KerastxError(
                    f"{at}: condition {condition!r} is not a tag of the model "
                    f"(tags: {', '.join(tags)})"
                )
            out.append(condition)
        texts.append(text)
    return out, texts


def run_condition_tags(data) -> list[str] | None:
    """The tags of a run's tag conditions, or None (vectors, or no condition)."""
    return list(data.conditions.tags) if data.conditions is not None else None


def _run_conditions(task, data, lines: list[str]):
    """(condition tensor builder or None, texts) of a run's input lines."""
    m = task.cfg.model
    if not (m.num_conditions or m.condition_dim):
        return None, lines
    tags = run_condition_tags(data)
    if m.num_conditions and tags is None:
        raise KerastxError("predict: the run has no conditions.txt (no condition_column)")
    values, texts = split_conditions(lines, m.condition_dim, tags)

    def batch(idx):
        if m.condition_dim:
            return tf.constant(np.stack([values[i] for i in idx]), tf.float32)
        return tf.constant([tags.index(values[i]) for i in idx], tf.int32)

    return batch, texts


def export_condition_spec(loaded):
    """The `condition` input of an export's `decode` signature (a `tf.TensorSpec`:
    `(B,)` string tags or `(B, C)` float32 vectors), or None without a condition."""
    return loaded.signatures["decode"].structured_input_signature[1].get("condition")


def export_conditions(loaded, lines: list[str], name: str | None = None):
    """(condition values or None, texts) of input lines for an export: the `condition`
    tensor of each batch is `tf.constant(values[start:end])`."""
    spec = export_condition_spec(loaded)
    if spec is None:
        return None, lines
    if spec.dtype == tf.string:
        tags = [t.decode("utf-8") for t in loaded.condition_tags().numpy()]
        return split_conditions(lines, 0, tags, name)
    values, texts = split_conditions(lines, int(spec.shape[-1]), None, name)
    return np.stack(values).astype(np.float32) if values else values, texts


def export_condition_batch(values, idx):
    """The `condition` input of an export for the inputs `idx` (see `export_conditions`)."""
    if isinstance(values, np.ndarray):
        return tf.constant(values[idx], tf.float32)
    return tf.constant([values[i] for i in idx], tf.string)


def split_texts(data, split: str, count: int) -> list[str]:
    """The first `count` distinct inputs of an evaluation split, in its order (with a
    condition: the lines `CONDITION<TAB>source`, see `DataModule.input_lines`)."""
    seen: dict[str, None] = {}
    for batch in data.eval_dataset(split, 256):
        texts = _strings(batch["source_text"].numpy())
        if "condition" in batch:
            texts = data.input_lines(batch["condition"].numpy(), texts)
        for text in texts:
            seen.setdefault(text, None)
            if len(seen) >= count:
                return list(seen)
    return list(seen)


def classify_lines(model, data, cfg, lines: list[str], batch_size: int) -> Decoded:
    """A classifier's `predict`: the label of each line, with its probability."""
    if cfg.model.num_conditions or cfg.model.condition_dim:
        raise KerastxError("predict: classifiers with a condition are not supported yet")
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
    condition, lines = _run_conditions(task, data, lines)
    out = Decoded([None] * len(lines), [None] * len(lines))
    decoder = inference.Decoder(model, task, settings, jit_compile=jit)
    for idx in length_sorted_batches(lines, batch_size):
        text = tf.constant([lines[i] for i in idx])
        inputs = {task.decode_input_key: task.encode_text(data.source_tokenizer, text, limit)}
        if condition is not None:
            inputs["condition"] = condition(idx)
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
    condition, lines = export_conditions(loaded, lines)
    out = Decoded([None] * len(lines), [None] * len(lines))
    defaults = inference.request_defaults(settings)
    request = {
        name: tf.constant(defaults[name], dtype) for name, dtype in inference.REQUEST_SETTINGS
    }
    for idx in length_sorted_batches(lines, batch_size):
        if condition is not None:
            request["condition"] = export_condition_batch(condition, idx)
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
    target + EOS scored (an empty source scores the target alone). The prompt is cut as
    `predict` cuts it (its first `task.input_tokens_kept()` tokens)."""
    pieces = _target_pieces(data.target_tokenizer, targets)
    bos, eos = _specials(len(targets))
    prompt = _target_pieces(data.source_tokenizer, sources)[:, : task.input_tokens_kept()]
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

    step = task.cfg.decoding.batch_size
    batches = [
        task.score_inputs(data, sources[start : start + step], targets[start : start + step])
        for start in range(0, len(sources), step)
    ]
    # The decoder reads target_out's length per pair (BOS + target, or BOS + prompt +
    # target): past model.max_length a learned position table has no row for it.
    limit = task.cfg.model.max_length
    lengths = np.concatenate([b[1].row_lengths().numpy() for b in batches]) if batches else []
    over = [int(i) for i in np.flatnonzero(np.asarray(lengths) > limit)]
    if over:
        raise TooLongToScore(over, [int(lengths[i]) for i in over], limit, len(sources))
    lines = []
    for inputs, target_out, scored in batches:
        total, count = logprob(inputs, target_out.to_tensor(), scored)
        lines.extend(f"{t:.6f}\t{int(c)}" for t, c in zip(total.numpy(), count.numpy()))
    return lines


class TooLongToScore(KerastxError):
    """Pairs whose scored sequence is longer than the model takes (`model.max_length`)."""

    def __init__(self, indices: list[int], lengths: list[int], limit: int, total: int, name=None):
        self.indices, self.lengths, self.limit, self.total = indices, lengths, limit, total
        where = f"{name}:{indices[0] + 1}" if name else f"pair {indices[0] + 1}"
        super().__init__(
            f"{where}: the scored sequence is {lengths[0]} tokens, over model.max_length="
            f"{limit} (the longest the model takes; {len(indices)} of {total} pairs: "
            f"{_line_numbers(indices)}); shorten those targets (or prompts), nothing was "
            f"scored"
        )

    def named(self, name: str) -> TooLongToScore:
        return TooLongToScore(self.indices, self.lengths, self.limit, self.total, name)
