"""Expert load of a mixture-of-experts model, per layer and per condition tag.

For a model with `model.num_experts > 0`, a teacher-forced pass over an evaluation split
records where each MoE layer's router sends the real (unpadded) tokens: the share of
token-expert assignments (all `top_k` choices of every token, before capacity) that go
to each expert, per layer, over the whole split and for each condition tag (the target
language of a multilingual model), plus the share of assignments dropped over capacity.
Each row of shares sums to 1. `kerastx evaluate` writes it to `eval_<split>.json` under
`expert_load` for MoE models.

The routing is read with the layer's own `MixtureOfExperts.route` on the inputs the layer
receives: each layer's `call` is wrapped for the pass (eagerly, so the wrapper sees
concrete tensors) and restored after it; the model's outputs are not changed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from kerastx.layers.mixture_of_experts import MixtureOfExperts


def moe_layers(model) -> list:
    """The model's MixtureOfExperts layers, in call order of their paths."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, MixtureOfExperts)]


@contextlib.contextmanager
def _recording(layers, sink: list):
    """While active, every call of a layer appends `(index, experts, assigned, kept)`."""
    originals = []
    for index, layer in enumerate(layers):
        original = layer.call

        def call(inputs, padding_mask=None, training=None, _i=index, _l=layer, _c=original):
            routing = _l.route(inputs, padding_mask)
            sink.append(
                (
                    _i,
                    np.asarray(routing["experts"]),  # (k, B, T)
                    np.asarray(routing["assigned"]),
                    np.asarray(routing["kept"]),
                )
            )
            return _c(inputs, padding_mask=padding_mask, training=training)

        originals.append(original)
        layer.call = call
    try:
        yield
    finally:
        for layer, original in zip(layers, originals):
            layer.call = original


def _empty(experts: int) -> dict:
    return {"assignments": np.zeros(experts), "dropped": 0.0}


def expert_load(task, model, data, split: str, max_batches: int = 0) -> dict:
    """The routing shares of a split (see the module docstring).

    Args:
        task: the run's task (`model_inputs`).
        model: the model, weights loaded.
        data: the DataModule.
        split: str. "dev" or "test".
        max_batches: int. Evaluation batches read; 0 = all.

    Returns:
        dict: `{"layers": [names], "experts": E, "all": {layer: {"share": [E floats],
        "dropped": float, "assignments": int}}, "by_condition": {tag: {layer: ...}}}`;
        an empty dict for a model without MoE layers.
    """
    layers = moe_layers(model)
    if not layers:
        return {}
    # Layer paths without the model's own (auto-numbered) name: "decoder_layer_0/...".
    names = [getattr(layer, "path", layer.name).split("/", 1)[-1] for layer in layers]
    experts = layers[0].num_experts
    tags = list(data.conditions.tags) if getattr(data, "conditions", None) else []
    totals = {"all": [_empty(experts) for _ in layers]}
    sink: list = []
    batches = 0
    with _recording(layers, sink):
        for batch in data.eval_dataset(split, task.cfg.decoding.batch_size):
            inputs, _ = task.model_inputs(
                {k: v for k, v in batch.items() if k not in ("source_text", "target_text")}
            )
            sink.clear()
            model(inputs, training=False)
            condition = inputs.get("condition")
            rows = None
            if tags and condition is not None and condition.dtype.is_integer:
                rows = np.asarray(tf.reshape(condition, [-1]))
            for index, chosen, assigned, kept in sink:
                groups = [("all", None)]
                if rows is not None:
                    groups += [(tags[c], rows == c) for c in np.unique(rows)]
                for group, select in groups:
                    per_layer = totals.setdefault(group, [_empty(experts) for _ in layers])
                    a = assigned if select is None else assigned[:, select]
                    e = chosen if select is None else chosen[:, select]
                    k_ = kept if select is None else kept[:, select]
                    counts = np.bincount(e.reshape(-1), weights=a.reshape(-1), minlength=experts)
                    per_layer[index]["assignments"] += counts
                    per_layer[index]["dropped"] += float(np.sum(a - k_))
            batches += 1
            if max_batches and batches >= max_batches:
                break

    def shares(per_layer) -> dict:
        out = {}
        for name, counts in zip(names, per_layer):
            total = float(counts["assignments"].sum())
            out[name] = {
                "share": [float(x) / total if total else 0.0 for x in counts["assignments"]],
                "dropped": counts["dropped"] / total if total else 0.0,
                "assignments": int(total),
            }
        return out

    return {
        "layers": names,
        "experts": experts,
        "all": shares(totals.pop("all")),
        "by_condition": {tag: shares(per_layer) for tag, per_layer in sorted(totals.items())},
    }


def table(load: dict) -> str:
    """The shares as a text table: one row per (condition, layer), one column per expert."""
    if not load:
        return ""
    head = "| condition | layer | " + " | ".join(f"e{i}" for i in range(load["experts"]))
    lines = [head + " | dropped |", "|---|---|" + "---|" * (load["experts"] + 1)]
    groups = [("all", load["all"])] + list(load["by_condition"].items())
    for group, per_layer in groups:
        for name, row in per_layer.items():
            cells = " | ".join(f"{100 * s:.1f}%" for s in row["share"])
            lines.append(f"| {group} | {name} | {cells} | {100 * row['dropped']:.1f}% |")
    return "\n".join(lines)
