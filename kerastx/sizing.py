"""The size of a model from its config, without TensorFlow: parameters and their memory.

`kerastx validate` must not import TensorFlow, yet it should tell a user that
`model.d_model: 1000000000` cannot fit before `train` finds out. So the parameter count
is written here in closed form, from the `model:` section and the vocabulary sizes,
for the layers of `kerastx.layers` and the three model classes of `kerastx.models`
(each family's task picks its model's formula: `Task.parameter_count`).
`tests/train/test_devices_and_memory.py` checks every formula against `count_params()`
of built models, exactly, over the options that change the count.

Per layer (`D = d_model`, `F = ffn_dim`, `F' = 2F` with swiglu else `F`, `E` experts):
- a norm: `2D` (LayerNorm: gamma, beta) or `D` (RMSNorm: scale);
- attention: `4 (D^2 + D)` (query, key, value, output kernels and biases; RoPE adds none);
- feed-forward: `D F' + F' + F D + D`; mixture of experts: router `D E` plus `E` times
  the feed-forward, plus its two routing counters (scalar variables `count_params`
  counts);
- encoder layer: attention + feed-forward + 2 norms; decoder layer: the same plus a
  cross-attention and its norm when it reads an encoder; a pre-norm stack adds one norm;
- learned positions `max_length D` per input side; a condition `num_conditions D`
  (ids) or `condition_dim D + D` (a vector).

Memory: variables are float32 (mixed precision changes the compute dtype only), and
the optimizer keeps slots of the same size: Adam and AdamW two per weight, Adafactor
one (its velocity) plus factored rows and columns, left out. Weights + optimizer state
is a lower bound of what training needs (gradients and activations come on top: see
`kerastx.train.memory.estimate_step`).
"""

from __future__ import annotations

import dataclasses
import os

BYTES_PER_WEIGHT = 4  # float32 variables
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "adafactor": 1}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a model's size needs from the data: vocabulary sizes and classes.

    Attributes:
        source_vocab: int. Entries of the source (or only) vocabulary.
        target_vocab: int or None. Entries of the target vocabulary (None: none).
        classes: int or None. Labels of a classifier (None: none).
        assumed: str. Empty when read from the data; else how the sizes were chosen
            (the text a message shows).
    """

    source_vocab: int
    target_vocab: int | None = None
    classes: int | None = None
    assumed: str = ""


# -- closed forms of the layers ---------------------------------------------------------


def norm(model) -> int:
    """Parameters of one normalization layer of width `d_model`."""
    return model.d_model if model.norm == "rmsnorm" else 2 * model.d_model


def attention(model) -> int:
    """Parameters of one attention sublayer (query, key, value, output projections)."""
    d = model.d_model
    return 4 * (d * d + d)


def feed_forward(model, experts: int = 0) -> int:
    """Parameters of a dense feed-forward block, or of a mixture of `experts` of them."""
    d, f = model.d_model, model.ffn_dim
    inner = 2 * f if model.activation == "swiglu" else f
    dense = d * inner + inner + f * d + d
    # A mixture: the router, the experts, and two scalar routing counters (variables).
    return d * experts + experts * dense + 2 if experts else dense


def _experts(model, index: int) -> int:
    """Experts of the `index`-th layer of a stack (0: a dense feed-forward)."""
    moe = model.num_experts > 0 and (index + 1) % model.moe_every == 0
    return model.num_experts if moe else 0


def stack(model, layers: int, cross_attention: bool = False) -> int:
    """Parameters of `layers` encoder (or decoder) layers and the stack's final norm."""
    total = 0
    for i in range(layers):
        total += attention(model) + feed_forward(model, _experts(model, i)) + 2 * norm(model)
        if cross_attention:
            total += attention(model) + norm(model)
    return total + (norm(model) if model.norm_position == "pre" else 0)


def positions(model) -> int:
    """Parameters of one input side's absolute positions (a learned table only)."""
    return model.max_length * model.d_model if model.position_encoding == "learned" else 0


def condition(model) -> int:
    """Parameters of the condition's embedding (ids) or projection (a vector)."""
    if model.num_conditions:
        return model.num_conditions * model.d_model
    if model.condition_dim:
        return model.condition_dim * model.d_model + model.d_model
    return 0


# -- closed forms of the models -----------------------------------------------------------


def encoder_decoder(model, source_vocab: int, target_vocab: int) -> int:
    """Parameters of a `Seq2SeqTransformer` (`share_embeddings` as the model reads it)."""
    d = model.d_model
    target = target_vocab * d + target_vocab  # the target table and the output bias
    if model.share_embeddings == "none":
        target += d * target_vocab  # an output projection of its own
    source = 0 if model.share_embeddings == "all" else source_vocab * d
    return (
        source
        + target
        + 2 * positions(model)
        + condition(model)
        + stack(model, model.num_encoder_layers)
        + stack(model, model.num_decoder_layers, cross_attention=True)
    )


def decoder_only(model, vocab: int) -> int:
    """Parameters of a `DecoderLM` (tied or untied output projection)."""
    d = model.d_model
    embeddings = vocab * d + vocab + (0 if model.tie_embeddings else d * vocab)
    return embeddings + positions(model) + condition(model) + stack(model, model.num_layers)


def encoder_classifier(model, vocab: int, classes: int) -> int:
    """Parameters of an `EncoderClassifier` (no output bias on the table; a dense head)."""
    d = model.d_model
    head = d * classes + classes
    return vocab * d + positions(model) + condition(model) + stack(model, model.num_layers) + head


# -- from a config ------------------------------------------------------------------------


def configured_sizes(cfg, target_vocabulary: str | None, labels: bool) -> Sizes:
    """The sizes `validate` assumes before any vocabulary exists: the configured ones.

    `data.*_tokenizer.vocab_size` is the size a wordpiece or SentencePiece vocabulary is
    built to and an upper bound for the other tokenizers, so the count is an upper
    bound there; a classifier's classes are unknown before its labels are read (2 are
    counted: the head is `d_model + 1` per class, a small share of any model).

    Args:
        cfg: the experiment.
        target_vocabulary: the task's `target_vocabulary` fact ("own", "source", None).
        labels: whether the task reads a label field.
    """
    d = cfg.data
    source = d.source_tokenizer.vocab_size
    target = None
    if target_vocabulary == "own":
        target = source if d.shared_vocab else d.target_tokenizer.vocab_size
    described = f"data.source_tokenizer.vocab_size={source}"
    if target is not None and not d.shared_vocab:
        described += f", data.target_tokenizer.vocab_size={target}"
    if labels:
        described += ", 2 classes"
    return Sizes(source, target, 2 if labels else None, f"the configured sizes ({described})")


def state_bytes(parameters: int, optimizer: str) -> int:
    """Bytes of the float32 weights and the optimizer's slots (a lower bound of training)."""
    return parameters * BYTES_PER_WEIGHT * (1 + OPTIMIZER_SLOTS.get(optimizer, 2))


def format_bytes(n: float) -> str:
    """`1.5 GiB`-style size (powers of 1024, as `free` and `top` show memory)."""
    for unit, scale in (
        ("EiB", 2**60),
        ("PiB", 2**50),
        ("TiB", 2**40),
        ("GiB", 2**30),
        ("MiB", 2**20),
    ):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    if abs(n) >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{int(n)} B"


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def size_text(parameters: int, optimizer: str) -> str:
    """`model of 1,234 parameters (19.3 KiB for the weights and adam's state)`."""
    need = format_bytes(state_bytes(parameters, optimizer))
    return f"model of {parameters:,} parameters ({need} for the weights and {optimizer}'s state)"


def advice(model, layer_keys: tuple[str, ...] = ()) -> str:
    """What to lower for a smaller model, with the values of now."""
    keys = ["d_model", "ffn_dim", *layer_keys]
    shown = ", ".join(f"model.{k}={getattr(model, k)}" for k in keys if hasattr(model, k))
    return f"make the model smaller ({shown}, or the vocabularies) or use a bigger machine"


def memory_warning(cfg, parameters: int, sizes: Sizes, layer_keys=(), have=None) -> str | None:
    """The warning `validate` logs when weights + optimizer state exceed this machine
    (the command line prints it as `kerastx validate: warning: ...`).

    Args:
        cfg: the experiment.
        parameters: the model's parameter count (`Task.parameter_count`).
        sizes: the sizes it was counted with (their `assumed` text is shown).
        layer_keys: the family's `model:` keys of layer counts (named in the advice).
        have: int or None. The machine's memory in bytes (default: `machine_memory()`).

    Returns:
        One line, or None when it fits (or the machine's memory is unknown).
    """
    have = machine_memory() if have is None else have
    need = state_bytes(parameters, cfg.training.optimizer)
    if not have or need <= have:
        return None
    assumed = f", counted with {sizes.assumed}" if sizes.assumed else ""
    return (
        f"{size_text(parameters, cfg.training.optimizer)}{assumed}: more than this "
        f"machine's {format_bytes(have)} before any gradient or activation, so training "
        f"will run out of memory; {advice(cfg.model, layer_keys)}"
    )


def layer_keys(model_keys) -> tuple[str, ...]:
    """The layer-count keys among a family's `model:` keys (`num_*layers`)."""
    return tuple(k for k in model_keys if k.startswith("num_") and k.endswith("layers"))
