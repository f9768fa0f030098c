"""The experiment format: one dataclass per YAML section, every field documented with its unit.

An experiment file holds only what differs from these defaults. `kerastx validate EXP
--explain` prints this table; `kerastx schema` writes it as JSON Schema.

Conventions used in the docs: "global" = summed over all replicas (devices) of the run,
"per replica" = one device's share; "steps" = optimizer updates (one update may take
several micro-batches with gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass

from kerastx import tasks
from kerastx.config.typed import option

CORPUS_TYPES = (
    "parallel",
    "tsv",
    "tfrecord",
    "text",
    "labelled",
    "synthetic",
    "cmudict",
    "gettext",
    "stdlib",
)
TOKENIZER_TYPES = ("chars", "words", "wordpiece", "sentencepiece", "symbols", "bytes")
# What each `training.init_parts` entry copies from `training.init_from`, by variable path.
INIT_PARTS = {
    "encoder": "encoder layers and the encoder's final norm",
    "decoder": "decoder layers and the decoder's final norm",
    "embeddings": "token, learned-position and condition embedding tables",
    "output": "the output projection (untied output kernel, output bias, classifier head)",
    "optimizer": "the optimizer state (same optimizer and variables needed)",
}


@dataclass(kw_only=True)
class CorpusConfig:
    """One data source; `type` says which of the other keys it reads."""

    type: str = option(doc="kind of source", choices=CORPUS_TYPES)
    source: str | None = option(
        None, doc="parallel: source text file, one example per line", unit="path"
    )
    target: str | None = option(
        None, doc="parallel: target text file, line-aligned with source", unit="path"
    )
    path: str | None = option(
        None, doc="tsv, tfrecord, text, labelled: the data file (or glob)", unit="path"
    )
    source_column: str = option(
        "source", doc="tsv: header name of the source column; tfrecord: feature key"
    )
    target_column: str = option(
        "target", doc="tsv: header name of the target column; tfrecord: feature key"
    )
    label_column: str = option(
        "label", doc="tsv/labelled/tfrecord: name of the class label column or feature key"
    )
    condition_column: str | None = option(
        None, doc="tsv/tfrecord: column holding a per-example condition tag (e.g. language)"
    )
    task: str = option(
        "copy",
        doc="synthetic: the task generated",
        choices=("copy", "reverse", "sort", "addition"),
    )
    num_examples: int = option(
        10000, doc="synthetic: examples generated per epoch", unit="examples", ge=1
    )
    min_length: int = option(1, doc="synthetic: shortest generated sequence", unit="symbols", ge=1)
    max_length: int = option(20, doc="synthetic: longest generated sequence", unit="symbols", ge=1)
    alphabet_size: int = option(
        20, doc="synthetic: number of distinct symbols", unit="symbols", ge=2
    )
    split: str = option(
        "train",
        doc="cmudict, gettext, stdlib: which split of the recipe",
        choices=("train", "dev", "test"),
    )
    keep_stress: bool = option(False, doc="cmudict: keep stress digits on vowels (AH0)")
    languages: list[str] = option(
        default_factory=list,
        doc="gettext (required): catalogue languages (directory names under locale_dir: "
        "fr, pt_BR); with records: strings also en (the English messages)",
    )
    locale_dir: str = option(
        "/usr/share/locale", doc="gettext: where the compiled catalogues are", unit="path"
    )
    records: str = option(
        "pairs",
        doc="gettext: pairs = one row per (English message, translation, language) for "
        "translation; strings = one row per distinct UI string and its language (columns "
        "source, label) for language identification",
        choices=("pairs", "strings"),
    )
    stdlib_dir: str | None = option(
        None,
        doc="stdlib: the Python sources read (site-packages, dist-packages always left "
        "out); default: sysconfig.get_paths()['stdlib'] of the running Python",
        unit="path",
    )
    chunk_bytes: int = option(
        1024,
        doc="stdlib: files are cut at line ends into examples of at most this many UTF-8 "
        "bytes (a longer line is cut); data.max_source_length must be > this",
        unit="bytes",
        ge=16,
    )
    include_tests: bool = option(
        False, doc="stdlib: also read the test directories (test/, tests/, idle_test/)"
    )
    weight: float = option(
        1.0, doc="sampling weight among the training corpora", unit="relative", gt=0
    )


@dataclass(kw_only=True)
class TokenizerConfig:
    """How text becomes token ids, inside the TensorFlow graph."""

    type: str = option(
        "chars",
        doc="tokenizer kind (bytes: UTF-8 bytes, 260 fixed ids, lossless, also on newlines)",
        choices=TOKENIZER_TYPES,
    )
    vocab: str | None = option(
        None,
        doc="vocabulary (or SentencePiece model) file; default: built from the training "
        "data into the run directory on first use",
        unit="path",
    )
    vocab_size: int = option(
        8000,
        doc="wordpiece/sentencepiece: size of the vocabulary to build; others: upper bound",
        unit="tokens (entries)",
        ge=8,
    )
    min_frequency: int = option(
        1,
        doc="drop vocabulary entries seen fewer times when building",
        unit="occurrences",
        ge=1,
    )
    lowercase: bool = option(False, doc="lowercase text before tokenizing")


@dataclass(kw_only=True)
class DataConfig:
    """Where examples come from and how they are batched."""

    train: list[CorpusConfig] = option(
        doc="training corpora (several are mixed by their weights)",
    )
    dev: CorpusConfig | None = option(
        None, doc="development set for evaluation during training", resume_safe=True
    )
    test: CorpusConfig | None = option(
        None, doc="test set for `kerastx evaluate`", resume_safe=True
    )
    data_dir: str = option(
        "data", doc="where recipes (cmudict, gettext, synthetic) write their files", unit="path"
    )
    source_tokenizer: TokenizerConfig = option(
        default_factory=TokenizerConfig, doc="tokenizer of the source side (or LM text)"
    )
    target_tokenizer: TokenizerConfig = option(
        default_factory=TokenizerConfig, doc="tokenizer of the target side"
    )
    shared_vocab: bool = option(
        False, doc="one vocabulary for source and target (needed for share_embeddings: all)"
    )
    max_source_length: int = option(
        256,
        doc="longest source kept, after tokenization, including EOS; when not set, at most "
        "model.max_length",
        unit="tokens",
        ge=2,
    )
    max_target_length: int = option(
        256,
        doc="longest target kept, after tokenization, including BOS/EOS; when not set, at "
        "most model.max_length",
        unit="tokens",
        ge=2,
    )
    length_policy: str = option(
        "drop",
        doc="what happens to longer examples (always counted and reported)",
        choices=("drop", "truncate", "error"),
    )
    invalid_utf8: str = option(
        "error",
        doc="invalid UTF-8 in a data file: stop naming file and line, or replace and count",
        choices=("error", "replace"),
    )
    empty_examples: str = option(
        "drop",
        doc="examples with an empty side (a blank line, or nothing left after "
        "tokenization): dropped (counted and reported, like length drops) or an error "
        "naming the file and line",
        choices=("drop", "error"),
    )
    batch_size: int = option(
        4096,
        doc="size of one training batch, in batch_unit, over batch_scope; a batch's tokens "
        "= examples x max(padded source length, padded target length)",
        ge=1,
        unit="tokens or examples (see batch_unit)",
    )
    batch_unit: str = option(
        "tokens",
        doc="what batch_size counts: padded token slots or examples",
        choices=("tokens", "examples"),
    )
    batch_scope: str = option(
        "global",
        doc="whether batch_size is summed over all replicas or each replica's share",
        choices=("global", "replica"),
    )
    bucket_width: int = option(
        1,
        doc="smallest step between length-bucket boundaries (a batch is padded to its "
        "bucket's boundary); 0 = no bucketing (every batch padded to the longest allowed "
        "length)",
        unit="tokens",
        ge=0,
    )
    bucket_growth: float = option(
        1.1,
        doc="each bucket boundary is at least this factor times the previous one (and at "
        "least bucket_width more), so buckets widen geometrically with length",
        unit="ratio",
        ge=1,
    )
    shuffle_buffer: int = option(
        100000,
        doc="examples held in the shuffle buffer; 0 = no shuffle",
        unit="examples",
        ge=0,
    )
    num_parallel_calls: int = option(
        -1,
        doc="parallel map calls in the pipeline; -1 = tf.data AUTOTUNE",
        unit="threads",
        ge=-1,
    )
    stream: str = option(
        "auto",
        doc="how training corpora are read: memory (read and tokenized once, in RAM), "
        "stream (read, tokenized and batched by tf.data from the files, memory flat in "
        "corpus size), or auto (stream when the training files exceed 32 MiB on disk)",
        choices=("auto", "memory", "stream"),
    )
    service: str | None = option(
        None,
        doc="streamed corpora: the address of a tf.data service dispatcher "
        "(grpc://host:port, started by `kerastx data-service`) that reads and batches the "
        "training stream for this trainer, or several separated by commas (input "
        "pipeline p, one per trainer worker, reads from address p % count); null = this "
        "process reads it",
    )
    vocab_sample: int = option(
        1000000,
        doc="streamed corpora: examples read to build vocabularies, labels and condition "
        "tags (the first lines of every file)",
        unit="examples",
        ge=1,
    )


@dataclass(kw_only=True)
class ModelConfig:
    """The network; keys equal the model constructor's arguments (vocab sizes come from data).

    Each family reads the keys its task lists (`kerastx.tasks`, `Task.model_keys`);
    `validate` refuses a key set for a family that does not read it.
    """

    type: str = option("seq2seq", doc="model family", choices=tasks.Names())
    d_model: int = option(512, doc="width of embeddings and hidden states", unit="units", ge=1)
    num_heads: int = option(8, doc="attention heads per attention layer", unit="heads", ge=1)
    num_encoder_layers: int = option(6, doc="encoder layers", unit="layers", ge=1)
    num_decoder_layers: int = option(6, doc="decoder layers", unit="layers", ge=1)
    num_layers: int = option(
        6,
        doc="layers of a decoder-only LM or encoder-only classifier",
        unit="layers",
        ge=1,
    )
    ffn_dim: int = option(2048, doc="inner width of the feed-forward block", unit="units", ge=1)
    activation: str = option(
        "relu", doc="feed-forward activation", choices=("relu", "gelu", "swiglu")
    )
    dropout: float = option(
        0.1, doc="dropout on embeddings and residual branches", unit="probability", ge=0, lt=1
    )
    attention_dropout: float = option(
        0.0, doc="dropout on attention probabilities", unit="probability", ge=0, lt=1
    )
    norm: str = option("layernorm", doc="normalization layer", choices=("layernorm", "rmsnorm"))
    norm_position: str = option(
        "pre",
        doc="normalize before (pre) or after (post, as in the paper) each block",
        choices=("pre", "post"),
    )
    norm_epsilon: float = option(1e-6, doc="epsilon of the normalization", unit="value", gt=0)
    position_encoding: str = option(
        "sinusoidal", doc="how positions are encoded", choices=("sinusoidal", "learned", "rope")
    )
    max_length: int = option(
        1024,
        doc="longest sequence the model accepts (position table, cache bound)",
        unit="tokens",
        ge=2,
    )
    share_embeddings: str = option(
        "none",
        doc="tie embeddings: none, target_output (decoder input = output projection), all "
        "(source, target, output; needs data.shared_vocab)",
        choices=("none", "target_output", "all"),
    )
    tie_embeddings: bool = option(
        True,
        doc="decoder-only LM: output projection shares the input embedding",
    )
    scale_embeddings: bool = option(True, doc="multiply embeddings by sqrt(d_model)")
    num_experts: int = option(
        0,
        doc="experts per mixture-of-experts layer; 0 = dense feed-forward",
        unit="experts",
        ge=0,
    )
    experts_top_k: int = option(2, doc="experts each token is routed to", unit="experts", ge=1)
    expert_capacity_factor: float = option(
        1.25,
        doc="expert capacity = factor * tokens * top_k / experts; overflow is dropped and counted",
        unit="ratio",
        gt=0,
    )
    moe_every: int = option(
        2, doc="every moe_every-th layer uses mixture-of-experts", unit="layers", ge=1
    )
    moe_aux_loss_weight: float = option(
        0.01, doc="weight of the load-balancing loss", unit="weight", ge=0
    )
    moe_z_loss_weight: float = option(0.001, doc="weight of the router z-loss", unit="weight", ge=0)
    num_conditions: int = option(
        0, doc="distinct condition tags (e.g. target languages); 0 = none", unit="tags", ge=0
    )
    condition_dim: int = option(
        0,
        doc="length of a per-example condition feature vector; 0 = none",
        unit="floats",
        ge=0,
    )
    pooling: str = option(
        "mean",
        doc="classifier pooling over positions",
        choices=("mean", "first", "max"),
    )


@dataclass(kw_only=True)
class TrainingConfig:
    """The optimization: steps, optimizer, schedule, precision, checkpoints."""

    train_steps: int = option(
        100000, doc="optimizer steps to train for", unit="steps", ge=1, resume_safe=True
    )
    steps_per_execution: int = option(
        10, doc="steps run inside one tf.function call", unit="steps", ge=1, resume_safe=True
    )
    optimizer: str = option("adam", doc="optimizer", choices=("adam", "adamw", "adafactor"))
    learning_rate: float = option(
        1e-3, doc="peak learning rate (reached at the end of warmup)", unit="per step", gt=0
    )
    schedule: str = option(
        "inverse_sqrt",
        doc="learning-rate schedule after warmup",
        choices=("inverse_sqrt", "cosine", "constant"),
    )
    warmup_steps: int = option(
        4000, doc="linear warmup from 0 to learning_rate", unit="steps", ge=0
    )
    min_learning_rate: float = option(0.0, doc="cosine: final learning rate", unit="per step", ge=0)
    beta_1: float = option(0.9, doc="Adam first-moment decay", unit="ratio", ge=0, lt=1)
    beta_2: float = option(0.98, doc="Adam second-moment decay", unit="ratio", ge=0, lt=1)
    epsilon: float = option(1e-9, doc="Adam epsilon", unit="value", gt=0)
    weight_decay: float = option(
        0.0, doc="adamw: decoupled weight decay", unit="per step, times lr", ge=0
    )
    label_smoothing: float = option(
        0.1, doc="label smoothing of the cross-entropy", unit="probability", ge=0, lt=1
    )
    clip_norm: float | None = option(
        1.0, doc="clip gradients to this global norm; null = no clipping", unit="norm", gt=0
    )
    gradient_accumulation: int = option(
        1,
        doc="micro-batches accumulated per optimizer step (each of data.batch_size)",
        unit="micro-batches",
        ge=1,
    )
    mixed_precision: str = option(
        "none",
        doc="compute dtype (variables stay float32)",
        choices=("none", "bfloat16", "float16"),
    )
    jit_compile: bool = option(False, doc="compile the train step with XLA", resume_safe=True)
    deterministic: bool = option(
        False,
        doc="bit-identical reruns on CPU (tf.config.experimental.enable_op_determinism)",
        resume_safe=True,
    )
    checkpoint_every: int = option(
        1000,
        doc="save a checkpoint every this many steps (and at the end)",
        unit="steps",
        ge=1,
        resume_safe=True,
    )
    keep_checkpoints: int = option(
        5, doc="most recent checkpoints kept", unit="checkpoints", ge=1, resume_safe=True
    )
    average_last: int = option(
        0,
        doc="at the end, average the last N checkpoints into the final model; 0 = off",
        unit="checkpoints",
        ge=0,
        resume_safe=True,
    )
    nan_policy: str = option(
        "fail",
        doc="non-finite loss: fail (error naming the step) or rollback to the last checkpoint",
        choices=("fail", "rollback"),
        resume_safe=True,
    )
    max_rollbacks: int = option(
        3,
        doc="rollback: give up after this many rollbacks",
        unit="rollbacks",
        ge=1,
        resume_safe=True,
    )
    init_from: str | None = option(
        None,
        doc="start from another run's checkpoint (run dir or checkpoint path)",
        unit="path",
    )
    init_parts: list[str] = option(
        default_factory=list,
        doc="init_from: which parts to load (e.g. encoder, decoder, embeddings); empty = all",
    )
    log_every: int = option(
        100,
        doc="write training metrics every this many steps",
        unit="steps",
        ge=1,
        resume_safe=True,
    )
    profile_steps: list[int] = option(
        default_factory=list,
        doc="[first, last] step of a TensorBoard profiler window; empty = off",
        unit="steps",
        resume_safe=True,
    )


@dataclass(kw_only=True)
class EvaluationConfig:
    """Evaluation during training and by `kerastx evaluate`."""

    every: int = option(
        1000,
        doc="evaluate on the dev set every this many steps; 0 = only at the end",
        unit="steps",
        ge=0,
        resume_safe=True,
    )
    metrics: list[str] = option(
        default_factory=list,
        doc="task metrics from decoding (wer, per, bleu, chrf, accuracy, placeholders, "
        "macro_f1); empty = the task's",
        resume_safe=True,
    )
    max_examples: int = option(
        0,
        doc="dev examples decoded for task metrics during training; 0 = all",
        unit="examples",
        ge=0,
        resume_safe=True,
    )
    best_metric: str = option(
        "loss",
        doc="metric that picks the best checkpoint and drives early stopping",
        resume_safe=True,
    )
    early_stopping_patience: int = option(
        0,
        doc="stop after this many evaluations without improvement; 0 = never",
        unit="evaluations",
        ge=0,
        resume_safe=True,
    )
    num_samples: int = option(
        5,
        doc="dev examples shown as source/reference/hypothesis text in TensorBoard",
        unit="examples",
        ge=0,
        resume_safe=True,
    )
    attention_images: int = option(
        2,
        doc="dev examples whose cross-attention maps go to TensorBoard",
        unit="examples",
        ge=0,
        resume_safe=True,
    )
    prompts: list[str] = option(
        default_factory=list,
        doc="inputs decoded at every evaluation with the decoding: settings (e.g. top-p "
        "sampling), in TensorBoard as eval/completions and in eval_<split>.json: a "
        "language model's continuations of these prompts",
        resume_safe=True,
    )


@dataclass(kw_only=True)
class DecodingConfig:
    """How outputs are produced (predict, evaluate, export defaults)."""

    strategy: str = option(
        "greedy", doc="search strategy", choices=("greedy", "beam", "sample"), resume_safe=True
    )
    beam_size: int = option(
        4, doc="beam: hypotheses kept", unit="hypotheses", ge=1, resume_safe=True
    )
    n_best: int = option(
        1,
        doc="outputs returned per input (<= beam_size)",
        unit="hypotheses",
        ge=1,
        resume_safe=True,
    )
    length_penalty: float = option(
        0.6,
        doc="beam: GNMT length penalty alpha; 0 = raw log-probability",
        unit="alpha",
        ge=0,
        resume_safe=True,
    )
    temperature: float = option(
        1.0, doc="sample: softmax temperature", unit="value", gt=0, resume_safe=True
    )
    top_k: int = option(
        0,
        doc="sample: keep the k most likely tokens; 0 = all",
        unit="tokens",
        ge=0,
        resume_safe=True,
    )
    top_p: float = option(
        1.0,
        doc="sample: nucleus probability mass kept",
        unit="probability",
        gt=0,
        le=1,
        resume_safe=True,
    )
    seed: int = option(
        0,
        doc="sample: seed of the stateless sampler",
        resume_safe=True,
        unit="seed",
        ge=0,
        le=2**31 - 1,
    )
    max_length_a: float = option(
        2.0,
        doc="longest output = a * source length + b (capped by max_length)",
        unit="ratio",
        ge=0,
        resume_safe=True,
    )
    max_length_b: int = option(10, doc="see max_length_a", unit="tokens", ge=0, resume_safe=True)
    max_length: int = option(
        256,
        doc="hard cap on output length (cache size); when not set, at most model.max_length",
        unit="tokens",
        ge=1,
        resume_safe=True,
    )
    batch_size: int = option(
        64, doc="examples decoded together", unit="examples", ge=1, resume_safe=True
    )
    long_inputs: str = option(
        "truncate",
        doc="predict/score/evaluate: an input longer than data.max_source_length is cut "
        "to it (counted and reported on stderr) or is an error naming its line",
        choices=("truncate", "error"),
        resume_safe=True,
    )
    jit_compile: bool = option(
        False,
        doc="decode with XLA in evaluate and predict (greedy, beam; compiles once per batch "
        "and length bucket, ~10-20 s each on a CPU, then runs faster)",
        resume_safe=True,
    )


# The decoding options only one strategy reads (the others apply to every strategy):
# `kerastx predict` refuses such a flag when the chosen strategy does not read it.
STRATEGY_OPTIONS = {
    "greedy": (),
    "beam": ("beam_size", "n_best", "length_penalty"),
    "sample": ("temperature", "top_k", "top_p", "seed"),
}


@dataclass(kw_only=True)
class ExportConfig:
    """The text-in/text-out SavedModel."""

    enabled: bool = option(True, doc="export at the end of training", resume_safe=True)
    parity_examples: int = option(
        50,
        doc="dev examples decoded by both the SavedModel and the framework; any "
        "difference fails the export",
        unit="examples",
        ge=0,
        resume_safe=True,
    )
    checkpoint: str = option(
        "auto",
        doc="weights that evaluate, predict and export load: best (checkpoints/best, by "
        "evaluation.best_metric), last (the newest checkpoint), averaged (training."
        "average_last); auto = averaged if the run made one, else best if it has one, else "
        "last. The one used is printed",
        choices=("auto", "best", "last", "averaged"),
        resume_safe=True,
    )
    examples: list[str] = option(
        default_factory=list,
        doc="inputs run through the exported SavedModel after training, outputs printed; "
        "empty = the first 5 test (or dev) inputs",
        resume_safe=True,
    )


@dataclass(kw_only=True)
class DistributionConfig:
    """Where training runs; the only section that changes between laptop, GPUs, TPU, cluster."""

    strategy: str = option(
        "default",
        doc="tf.distribute strategy",
        choices=("default", "one_device", "mirrored", "multi_worker", "tpu"),
        resume_safe=True,
    )
    devices: list[str] = option(
        default_factory=list,
        doc="one_device/mirrored: devices to use (e.g. /gpu:0); empty = all local GPUs, "
        "else the CPU",
        resume_safe=True,
    )
    logical_cpus: int = option(
        0,
        doc="split the CPU into this many logical devices (to try mirrored on a laptop)",
        unit="devices",
        ge=0,
        resume_safe=True,
    )
    cluster_resolver: str = option(
        "tf_config",
        doc="multi_worker: where the cluster comes from",
        choices=("tf_config", "slurm"),
        resume_safe=True,
    )
    timeout_seconds: int = option(
        300,
        doc="multi_worker: a collective waiting longer than this fails instead of hanging",
        unit="seconds",
        ge=1,
        resume_safe=True,
    )
    tpu: str = option("", doc="tpu: TPU name or address for the resolver", resume_safe=True)


@dataclass(kw_only=True)
class ExperimentConfig:
    """A kerastx experiment."""

    name: str = option("", doc="experiment name; empty = the YAML file's name")
    run_dir: str = option(
        "",
        doc="where checkpoints, logs and the export go; empty = runs/<name>",
        unit="path",
        resume_safe=True,
    )
    seed: int = option(
        1234, doc="seed of initialization, data order and dropout", unit="seed", ge=0, le=2**32 - 1
    )
    data: DataConfig = option(doc="the data section")
    model: ModelConfig = option(default_factory=ModelConfig, doc="the model section")
    training: TrainingConfig = option(default_factory=TrainingConfig, doc="the training section")
    evaluation: EvaluationConfig = option(
        default_factory=EvaluationConfig, doc="the evaluation section"
    )
    decoding: DecodingConfig = option(default_factory=DecodingConfig, doc="the decoding section")
    export: ExportConfig = option(default_factory=ExportConfig, doc="the export section")
    distribution: DistributionConfig = option(
        default_factory=DistributionConfig, doc="the distribution section"
    )
