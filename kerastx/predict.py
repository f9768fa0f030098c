"""`kerastx predict` (decode text) and `kerastx score` (log-probability of pairs).

`predict` reads one example per line (a file or stdin) and writes one output per line in
input order; internally the inputs are sorted by length so each batch has little
padding. It works from a run directory (the framework's decoder) or from an exported
SavedModel directory (its `decode` signature), with the same settings.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

from kerastx import inference
from kerastx.errors import KerastxError


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


def _batches(lines: list[str], batch_size: int):
    """Index batches of similar length (by characters), in a stable order."""
    order = sorted(range(len(lines)), key=lambda i: (len(lines[i]), i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _format(outputs: list[list[str]], scores: list[list[float]], n_best: int) -> list[str]:
    if n_best == 1:
        return [o[0] for o in outputs]
    return [
        f"{i} ||| {text} ||| {score:.4f}"
        for i, (texts, ss) in enumerate(zip(outputs, scores))
        for text, score in zip(texts, ss)
    ]


def _settings_args(settings: dict) -> dict:
    beam = settings["strategy"] == "beam"
    return {
        "beam_size": tf.constant(settings["beam_size"] if beam else 1, tf.int32),
        "n_best": tf.constant(settings["n_best"] if beam else 1, tf.int32),
        "length_penalty": tf.constant(settings["length_penalty"], tf.float32),
        "sampling": tf.constant(settings["strategy"] == "sample"),
        "temperature": tf.constant(settings["temperature"], tf.float32),
        "top_k": tf.constant(settings["top_k"], tf.int32),
        "top_p": tf.constant(settings["top_p"], tf.float32),
        "seed": tf.constant(settings["seed"], tf.int32),
        "max_length": tf.constant(settings["max_length"], tf.int32),
    }


def predict_lines(path: str, lines: list[str], decoding: dict | None = None) -> list[str]:
    """Decodes `lines` with a run directory or an exported SavedModel; input order kept."""
    decoding = dict(decoding or {})
    batch_size = decoding.pop("batch_size", None)
    outputs: list = [None] * len(lines)
    scores: list = [None] * len(lines)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        import tensorflow_text  # noqa: F401 - registers the tokenizer ops

        from kerastx.config import load_experiment

        loaded = tf.saved_model.load(path)
        cfg, _ = load_experiment([os.path.join(path, "assets", "config.yaml")])
        settings = inference.settings_from_config(cfg.decoding, **decoding)
        args = _settings_args(settings)
        for idx in _batches(lines, batch_size or cfg.decoding.batch_size):
            out = loaded.signatures["decode"](text=tf.constant([lines[i] for i in idx]), **args)
            texts, ss = out["outputs"].numpy(), out["scores"].numpy()
            for row, i in enumerate(idx):
                outputs[i] = [t.decode("utf-8") for t in texts[row]]
                scores[i] = [float(s) for s in ss[row]]
        n_best = settings["n_best"] if settings["strategy"] == "beam" else 1
        return _format(outputs, scores, n_best)

    from kerastx.runs import load_run

    run = load_run(path)
    cfg = run.cfg
    if cfg.model.type != "seq2seq":
        raise KerastxError(f"predict: model type '{cfg.model.type}' is not supported yet")
    settings = inference.settings_from_config(cfg.decoding, **decoding)
    decoder = inference.Decoder(run.model, cfg.model.type, settings)
    for idx in _batches(lines, batch_size or cfg.decoding.batch_size):
        text = tf.constant([lines[i] for i in idx])
        source_ids = inference.encode_source(
            run.data.source_tokenizer, text, cfg.data.max_source_length
        )
        result = decoder({"source_ids": source_ids})
        ids = result.ids if result.ids.shape.rank == 3 else result.ids[:, None]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[2]])
        texts = run.data.target_tokenizer.detokenize(flat).numpy().reshape(ids.shape[:2])
        ss = np.reshape(result.normalized_scores.numpy(), ids.shape[:2])
        for row, i in enumerate(idx):
            outputs[i] = [t.decode("utf-8") for t in texts[row]]
            scores[i] = [float(s) for s in ss[row]]
    n_best = settings["n_best"] if settings["strategy"] == "beam" else 1
    return _format(outputs, scores, n_best)


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


def run_score(path: str, source: str, target: str, output_path: str | None = None) -> int:
    """`kerastx score RUN_DIR`: log-probability of each target given its source.

    Writes one line per pair: the summed log-probability (natural log, EOS included) and
    the number of target tokens, tab-separated.
    """
    from kerastx.runs import load_run

    sources, targets = _read_lines(source), _read_lines(target)
    if len(sources) != len(targets):
        raise KerastxError(f"{source} has {len(sources)} lines but {target} has {len(targets)}")
    run_ = load_run(path)
    cfg, data, model = run_.cfg, run_.data, run_.model
    if cfg.model.type != "seq2seq":
        raise KerastxError(f"score: model type '{cfg.model.type}' is not supported yet")

    @tf.function(reduce_retracing=True)
    def logprob(source_ids, target_in, target_out):
        logits = model({"source_ids": source_ids, "target_in_ids": target_in}, training=False)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        picked = tf.gather(logp, target_out, axis=-1, batch_dims=2)
        mask = tf.cast(tf.not_equal(target_out, 0), tf.float32)
        return tf.reduce_sum(picked * mask, axis=1), tf.reduce_sum(mask, axis=1)

    lines = []
    for start in range(0, len(sources), cfg.decoding.batch_size):
        src = tf.constant(sources[start : start + cfg.decoding.batch_size])
        tgt = tf.constant(targets[start : start + cfg.decoding.batch_size])
        source_ids = inference.encode_source(data.source_tokenizer, src, cfg.data.max_source_length)
        pieces = tf.cast(data.target_tokenizer.tokenize(tgt), tf.int32)
        ones = tf.RaggedTensor.from_tensor(tf.ones([tf.shape(tgt)[0], 1], tf.int32))
        target_in = tf.concat([ones, pieces], axis=1).to_tensor()
        target_out = tf.concat([pieces, ones * 2], axis=1).to_tensor()
        total, count = logprob(source_ids, target_in, target_out)
        lines.extend(f"{t:.6f}\t{int(c)}" for t, c in zip(total.numpy(), count.numpy()))
    _write_lines(output_path, lines)
    return 0
