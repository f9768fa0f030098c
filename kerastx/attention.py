"""`kerastx attention RUN --input TEXT -o FILE.png`: the cross-attention of one input.

The run's model is loaded as `kerastx predict` loads it (`runs.load_run`: the checkpoint
chosen by `export.checkpoint`, or `--checkpoint`), the input is encoded as predict
encodes it (`task.encode_text`: tokens cut to `data.max_source_length`, then EOS) and
decoded with the run's `decoding:` settings (the best hypothesis; or the output given
with `--target`). A teacher-forced pass over (source, BOS + output) gives each decoder
layer's cross-attention per head (`Seq2SeqTransformer.cross_attention_weights`), and
`kerastx.plots` draws the layers and heads asked for: one panel per (layer, head),
source tokens + EOS on x, the output tokens + EOS on y (the token written at each row).
Layers and heads are counted from 1, as in the panel titles.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from kerastx import evaluate, inference, plots, runs
from kerastx.errors import KerastxError
from kerastx.special_ids import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger("kerastx")


def _pick(value, count: int, key: str, words: tuple[str, ...], what: str) -> list | str:
    """`value` (None, a word of `words`, or an int / digit string 1..count) checked:
    a list of 0-based indices, or the word. None means the last (layers)."""
    from kerastx.workflow import OptionError

    if value is None:
        return [count - 1]
    if isinstance(value, str) and value in words:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not 1 <= number <= count:
        choices = [f"1..{count}" if count > 1 else "1", *words]
        choices = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        has = f"{count} {what}" if count > 1 else f"1 {what[:-1]}"
        raise OptionError([(key, f"must be {choices} (the model has {has}); got {value!r}")])
    return [number - 1]


def _ids_until_eos(ids) -> list[int]:
    """Ids up to and including the first EOS, without padding."""
    out = []
    for i in (int(v) for v in np.asarray(ids).reshape(-1)):
        if i == PAD_ID:
            break
        out.append(i)
        if i == EOS_ID:
            break
    return out


def run(
    run_dir: str,
    text: str,
    output: str,
    layer=None,
    head="mean",
    target: str | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Draws the cross-attention of a seq2seq run for one input and writes a PNG.

    Args:
        run_dir: str. The run directory.
        text: str. The input (source) text.
        output: str. The PNG file to write.
        layer: int (1..L), "all", or None (the last decoder layer).
        head: int (1..N), "mean" (over heads, the default) or "all".
        target: str or None. Draw the attention for this output text (teacher-forced)
            instead of the decoded one.
        checkpoint: str or None. `export.checkpoint` (auto, best, last, averaged).

    Returns:
        dict: "output" (the PNG path), "output_text" (the output drawn), "panels" (the
        panel titles), "size" (width, height in pixels).

    Raises:
        KerastxError: the run is not an encoder-decoder, has a condition, the layer or
            head is out of range (an `OptionError` naming `layer` / `head`), or the
            output file cannot be written.
    """
    overrides = [] if checkpoint is None else [f"export.checkpoint={checkpoint}"]
    loaded = runs.load_run(run_dir, overrides)
    cfg, task, model, data = loaded.cfg, loaded.task, loaded.model, loaded.data
    if not hasattr(model, "cross_attention_weights"):
        raise KerastxError(
            f"{run_dir}: model.type={cfg.model.type} has no cross-attention; kerastx "
            "attention draws the decoder's attention over the source of an "
            "encoder-decoder run"
        )
    if cfg.model.num_conditions or cfg.model.condition_dim:
        raise KerastxError(f"{run_dir}: attention: models with a condition are not supported yet")
    num_layers, num_heads = model.num_decoder_layers, model.num_heads
    layers = _pick(layer, num_layers, "layer", ("all",), "decoder layers")
    heads = _pick(head, num_heads, "head", ("mean", "all"), "heads")
    layers = list(range(num_layers)) if layers == "all" else layers

    kept = task.input_tokens_kept()
    source_ids = task.encode_text(data.source_tokenizer, tf.constant([text]), kept + 1)
    pieces = int(data.source_tokenizer.tokenize(tf.constant([text])).row_lengths()[0])
    if pieces > kept:
        log.warning(
            "the input has %d tokens; its first %d are drawn (data.max_source_length=%d)",
            pieces,
            kept,
            cfg.data.max_source_length,
        )
    if target is None:
        settings = inference.settings_from_config(cfg.decoding)
        result = inference.decode_batch(model, task, {"source_ids": source_ids}, settings)
        written = _ids_until_eos(inference.best_ids(result)[0])
    else:
        pieces = data.target_tokenizer.tokenize(tf.constant([target])).to_list()[0]
        written = [int(i) for i in pieces[: cfg.data.max_target_length - 1]] + [EOS_ID]
    output_text = data.target_tokenizer.detokenize(tf.constant([written], tf.int32)).numpy()[0]
    output_text = output_text.decode("utf-8") if isinstance(output_text, bytes) else output_text
    inputs = {
        "source_ids": source_ids,
        "target_in_ids": tf.constant([[BOS_ID, *written[:-1]]], tf.int32),
    }
    columns = int(np.sum(source_ids.numpy()[0] != PAD_ID))
    maps, titles = [], []
    for index in layers:
        weights = np.asarray(model.cross_attention_weights(inputs, layer=index))[0]  # (N,T,S)
        weights = weights[:, :, :columns]
        if heads == "mean":
            maps.append(weights.mean(axis=0))
            titles.append(plots.attention_title(index + 1, num_layers, None, num_heads))
            continue
        for h in range(num_heads) if heads == "all" else heads:
            maps.append(weights[h])
            titles.append(plots.attention_title(index + 1, num_layers, h + 1, num_heads))
    per_row = min(num_heads, 4) if heads == "all" else min(len(maps), 3)
    fig = plots.attention_figure(
        np.stack(maps),
        evaluate.token_strings(data.source_tokenizer, source_ids.numpy()[0, :columns]),
        evaluate.token_strings(data.target_tokenizer, written),
        titles,
        columns=per_row,
        suptitle=f"input: {text}  →  output: {output_text}",
    )
    png = plots.figure_png(fig)
    try:
        with open(output, "wb") as f:
            f.write(png)
    except OSError as err:
        raise KerastxError(f"{output}: cannot write the picture ({err.strerror})") from None
    size = (int(fig.get_figwidth() * plots.DPI), int(fig.get_figheight() * plots.DPI))
    log.info("output: %s", output_text)
    return {
        "output": os.path.abspath(output),
        "output_text": output_text,
        "panels": titles,
        "size": size,
    }
