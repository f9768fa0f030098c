"""Memory of one training step, estimated from the shapes, and the out-of-memory message.

The estimate is the peak of a step in bytes, from the model's variables, the optimizer's
variables and the batch shape:

    peak = parameters + optimizer + weight_casts
           + max(backward phase: activations + logits + one gradient copy,
                 update phase:   two gradient copies + Adam's temporaries)

- `parameters`: the model's variables (at their dtypes); `optimizer`: the optimizer's variables
  (read from the built optimizer); `weight_casts`: under mixed precision, one
  compute-dtype copy of the weights (the autocast reads the backward pass keeps);
- `gradients`: one float32 copy of the trainable variables while the backward pass
  accumulates them; two (the gradients and their clipped copy) when the update runs,
  plus three temporaries of the largest variable (Adam's new moments and step);
- `activations`: what the forward pass keeps for the backward pass, per layer below;
- `logits`: the float32 output layer: the logits, their log-softmax and their gradient
  (3 x positions x vocabulary), the dominant term at large vocabularies.

Activations kept per layer (`N` tokens of the stack, width `D`, inner width `F`, `H`
heads, query length `L`, key length `S`, `e` bytes per compute-dtype element;
attention probabilities in float32):
- self-attention: norm input and output, query, key, value, context, output and its
  dropout mask: `7 N D e`, and the probabilities `1.25 x B H L S x 4` (with the mask);
- cross-attention: the same with keys and values of the memory's `N_s` tokens:
  `7 N D e + 2 N_s D e + 1.25 x B H L S x 4`;
- feed-forward: norm input and output, output and dropout mask `3 N D e`, the inner
  activation `N F e`;
- embeddings (lookup, scale, positions, dropout) `4 N D e` per stack.
The coefficients are counts of those tensors, checked against TensorFlow's allocator
peak of a forward and backward pass at d512 (B 32, L 128): measured 137 MB per encoder
layer (counted 138 MB), 144-158 MB per decoder-only layer, 266 MB per encoder-decoder
decoder layer (counted 235 MB).

It is an estimate, not an accounting of TensorFlow's allocator: the real-size tests
check that a step's measured peak stays within a small factor of it, so a hidden tensor
larger than the model's real working set (the `(B, T, V, D)` gradient of issue 11)
fails them.
"""

from __future__ import annotations

import math
import re

import numpy as np

from kerastx.sizing import format_bytes, machine_memory  # noqa: F401 - format_bytes: bench_memory

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
POLICY_DTYPES = {"none": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _size(variables) -> int:
    return int(sum(math.prod(v.shape) for v in variables))


def variable_bytes(variables) -> int:
    """Bytes the variables hold, each at its own dtype."""
    return int(sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def _attention(b, h, n_q, len_q, len_k, d, e, n_kv=None) -> float:
    """Bytes an attention sublayer keeps; `n_kv`: memory tokens of a cross-attention."""
    kept = 7 * n_q * d * e + 1.25 * b * h * len_q * len_k * 4
    return kept if n_kv is None else kept + 2 * n_kv * d * e


def _feed_forward(n, d, f, e) -> float:
    return (3 * n * d + n * f) * e


def _sides(batch_shapes: dict) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(B, S) of the encoder input and (B, T) of the decoder input, None when absent."""
    source = batch_shapes.get("source_ids")
    target = batch_shapes.get("target_in_ids", batch_shapes.get("token_ids"))
    return (
        tuple(int(x) for x in source) if source is not None else None,
        tuple(int(x) for x in target) if target is not None else None,
    )


def _output_width(model) -> int:
    """Width of the output layer: the target vocabulary, or the classes."""
    for name in ("num_classes", "target_vocab_size", "vocab_size"):
        value = getattr(model, name, None)
        if value:
            return int(value)
    raise ValueError("cannot tell the output width of this model")


def estimate_step(model, batch_shapes: dict, optimizer=None, mixed_precision="none") -> dict:
    """Estimated peak bytes of one training step of `model` on one micro-batch.

    Args:
        model: a built kerastx model (`encoder_layers` and/or `decoder_layers`).
        batch_shapes: dict of batch key -> shape (`source_ids`, `target_in_ids` or
            `token_ids`) of one per-replica micro-batch.
        optimizer: the built optimizer, or None (two slots per weight assumed, as Adam).
        mixed_precision: "none", "bfloat16" or "float16" (`training.mixed_precision`).

    Returns:
        dict of int bytes: `parameters`, `optimizer`, `weight_casts`, `gradients` (one
        copy), `activations`, `logits`, `backward_phase`, `update_phase` and `total` (the
        estimated peak).
    """
    e = _BYTES[POLICY_DTYPES[mixed_precision]]
    d, f, h = model.d_model, model.ffn_dim, model.num_heads
    params = variable_bytes(model.variables)
    grads = _size(model.trainable_variables) * 4
    opt = variable_bytes(optimizer.variables) if optimizer is not None else 2 * grads
    largest = max((math.prod(v.shape) for v in model.trainable_variables), default=0) * 4
    source, target = _sides(batch_shapes)
    activations = 0.0
    if getattr(model, "encoder_layers", None):
        b, s = source
        n = b * s
        layer = _attention(b, h, n, s, s, d, e) + _feed_forward(n, d, f, e)
        activations += len(model.encoder_layers) * layer + 4 * n * d * e
    if getattr(model, "decoder_layers", None):
        b, t = target
        n = b * t
        for layer in model.decoder_layers:
            activations += _attention(b, h, n, t, t, d, e) + _feed_forward(n, d, f, e)
            if getattr(layer, "use_cross_attention", False):
                activations += _attention(b, h, n, t, source[1], d, e, n_kv=b * source[1])
        activations += 4 * n * d * e
        positions = b * t
    else:
        positions = source[0]  # one prediction per example
    logits = 3 * positions * _output_width(model) * 4
    casts = grads // 4 * e if mixed_precision != "none" else 0
    backward = int(activations) + logits + grads
    update = 2 * grads + 3 * largest
    return {
        "parameters": params,
        "optimizer": opt,
        "weight_casts": casts,
        "gradients": grads,
        "activations": int(activations),
        "logits": int(logits),
        "backward_phase": backward,
        "update_phase": update,
        "total": params + opt + casts + max(backward, update),
    }


def batch_shapes_of(examples: int, length: int) -> dict:
    """The model-input shapes of a `(examples, padded length)` batch, for every family.

    Both sides of a training batch are padded to the same bucket boundary; the estimate
    reads the keys its model has (`source_ids` for encoders, `target_in_ids`/`token_ids`
    for decoders).
    """
    shape = (int(examples), int(length))
    return {"source_ids": shape, "target_in_ids": shape, "token_ids": shape}


def out_of_memory_message(
    steps: tuple[int, int],
    batch: tuple[int, int] | None,
    parameters: int,
    estimate: int | None,
    batch_size: int,
    batch_unit: str,
    accumulation: int,
    tensorflow_message: str = "",
) -> str:
    """The one line a user reads when a training step runs out of memory.

    Args:
        steps: `(first, last)` step of the failed call (equal for one step).
        batch: `(examples, padded length)` of the largest batch those steps read, or
            None when the data cannot tell.
        parameters: the model's parameter count.
        estimate: the estimated peak bytes of a step on that batch (`estimate_step`),
            or None.
        batch_size, batch_unit: `data.batch_size` and `data.batch_unit`.
        accumulation: `training.gradient_accumulation`.
        tensorflow_message: the allocator's message (the tensor it could not allocate).
    """
    first, last = steps
    where = f"training step {first}" if first == last else f"training steps {first}-{last}"
    parts = [f"out of memory in {where}"]
    if batch is not None:
        parts.append(f"batch of {batch[0]} x {batch[1]} (examples x padded tokens)")
    parts.append(f"model of {parameters:,} parameters")
    if estimate is not None:
        have = machine_memory()
        on = f" of this machine's {format_bytes(have)}" if have else ""
        parts.append(f"estimated step memory {format_bytes(estimate)}{on}")
        if have and 4 * estimate < have:
            # A step that should fit several times over: other processes hold the
            # memory, or a tensor the estimate does not know of (issue 11's was one).
            parts.append(
                "that is far below the machine's memory: check other processes, or report "
                "this as a kerastx bug with this line"
            )
    detail = tensorflow_detail(tensorflow_message)
    if detail:
        parts.append(f"TensorFlow: {detail}")
    half = max(batch_size // 2, 1)
    unit = "tokens" if batch_unit == "tokens" else "examples"
    advice = (
        f"to use less memory lower data.batch_size ({batch_size} {unit}), "
        f"data.max_source_length/data.max_target_length, or keep the global batch with "
        f"smaller micro-batches: --set data.batch_size={half} "
        f"--set training.gradient_accumulation={2 * accumulation}"
    )
    return "; ".join(parts) + "; " + advice


_OOM_TENSOR = re.compile(r"OOM when allocating tensor with shape\s*\[[^\]]*\][^\n]*?type \w+")


def tensorflow_detail(message: str) -> str:
    """The useful part of TensorFlow's out-of-memory message: which tensor failed."""
    found = _OOM_TENSOR.search(message or "")
    if found:
        return found.group(0)
    for line in (message or "").splitlines():
        line = line.strip()
        if line and not line.endswith("execution error:"):
            return line[:200]
    return ""


def largest_batch(planner, position: tuple[int, int], count: int) -> tuple[int, int] | None:
    """`(examples, padded length)` of the largest (by slots) of the `count` batches of
    the training stream from `position` = (epoch, index) on; None if there are none."""
    epoch, index = int(position[0]), int(position[1])
    best = None
    left = int(count)
    while left > 0:
        _, sizes, lengths, _ = planner.plan(epoch, skip=index)
        if not len(sizes) and index == 0:
            break  # an empty epoch: no batch to name
        take = min(left, len(sizes))
        for size, length in zip(sizes[:take], lengths[:take]):
            if best is None or size * length > best[0] * best[1]:
                best = (int(size), int(length))
        left -= take
        epoch, index = epoch + 1, 0
    return best
