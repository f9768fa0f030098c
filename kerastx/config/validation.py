"""Cross-field rules of an experiment, checked once after every field is typed.

The rules run on the valid fields even when others failed typing: a failed field is a
`typed.Invalid`, and a rule that reads one is skipped (`_Checker.rule`), so the user sees
every typing error and every broken rule of the remaining values in one pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import TYPE_CHECKING

from kerastx import metrics, tasks
from kerastx.config import typed
from kerastx.config.errors import ConfigError
from kerastx.config.sections import INIT_PARTS, CorpusConfig, ExperimentConfig, ModelConfig

if TYPE_CHECKING:
    from kerastx.config.loader import Provenance

# The keys each corpus type reads, beyond `type` and `weight`.
CORPUS_KEYS = {
    "parallel": ("source", "target"),
    "tsv": ("path", "source_column", "target_column", "label_column", "condition_column"),
    "tfrecord": ("path", "source_column", "target_column", "label_column", "condition_column"),
    "text": ("path",),
    "labelled": ("path",),
    "synthetic": ("task", "num_examples", "min_length", "max_length", "alphabet_size"),
    "cmudict": ("split", "keep_stress"),
    "gettext": (
        "split",
        "languages",
        "locale_dir",
        "records",
        "source_column",
        "target_column",
        "label_column",
        "condition_column",
    ),
    "stdlib": ("split", "stdlib_dir", "chunk_bytes", "include_tests"),
}
CORPUS_REQUIRED = {
    "parallel": ("source", "target"),
    "tsv": ("path",),
    "tfrecord": ("path",),
    "text": ("path",),
    "labelled": ("path",),
    "gettext": ("languages",),
}


class _Checker:
    def __init__(self, prov: Provenance):
        self.prov = prov
        self.errors: list[str] = []

    @staticmethod
    def rule() -> contextlib.suppress:
        """`with c.rule():` one rule; one that reads a field which failed typing is skipped."""
        return contextlib.suppress(typed.InvalidValueUsed)

    def origin(self, path: tuple) -> str:
        """Where the value at `path` was set, for messages that name two keys."""
        if path not in self.prov.locations:
            return "the default"
        filename, line = self.prov.locations[path]
        if filename.startswith("--set "):
            return f"set by {filename}"
        return f"set at {filename}:{line}" if line else f"set in {filename}"

    def fail(self, path: tuple, message: str, *related: tuple) -> None:
        """Records a broken rule at `path`; names the first of `path` and `related` the user
        set (a rule broken by a default is reported where the other value was set)."""
        for candidate in (path, *related):
            if candidate in self.prov.locations:
                filename, line = self.prov.locations[candidate]
                at = f"{filename}:{line}" if line else filename
                self.errors.append(f"{at}: {typed.dotted(path)}: {message}")
                return
        self.errors.append(f"{typed.where(path, self.prov.locations)}: {message}")


def _check_corpus(c: _Checker, corpus: CorpusConfig, path: tuple, task) -> None:
    with c.rule():
        reads = CORPUS_KEYS[corpus.type]
        for f in dataclasses.fields(CorpusConfig):
            if f.name in ("type", "weight") or f.name in reads:
                continue
            with c.rule():
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                if c.prov.explicit(path + (f.name,)) and getattr(corpus, f.name) != default:
                    c.fail(
                        path + (f.name,),
                        f"not read by corpus type '{corpus.type}' (it reads: {', '.join(reads)})",
                    )
    with c.rule():
        for key in CORPUS_REQUIRED.get(corpus.type, ()):
            with c.rule():
                if not getattr(corpus, key):
                    c.fail(path + (key,), f"missing required key for corpus type '{corpus.type}'")
    with c.rule():
        if corpus.type == "synthetic" and corpus.min_length > corpus.max_length:
            c.fail(
                path + ("min_length",),
                f"must be <= max_length ({corpus.max_length}); got {corpus.min_length}",
            )
    with c.rule():
        if corpus.type not in task.corpus_types:
            c.fail(
                path + ("type",),
                f"corpus type '{corpus.type}' cannot feed a '{task.name}' "
                f"model (use one of: {', '.join(task.corpus_types)})",
            )


def _check_model_keys(c: _Checker, cfg: ExperimentConfig, task) -> None:
    """`model:` keys set (away from their default) that the chosen family does not read."""
    m = cfg.model
    for f in dataclasses.fields(ModelConfig):
        with c.rule():
            if f.name == "type" or f.name in task.model_keys:
                continue
            if c.prov.explicit(("model", f.name)) and getattr(m, f.name) != f.default:
                readers = [name for name in tasks.names() if f.name in tasks.get(name).model_keys]
                c.fail(
                    ("model", f.name),
                    f"not used by model type '{m.type}' (only by {', '.join(readers)})",
                )


def _check_metrics(c: _Checker, cfg: ExperimentConfig, task) -> None:
    """Metrics the task cannot compute, and a best metric it will not report."""
    e = cfg.evaluation
    with c.rule():
        for metric in e.metrics:
            with c.rule():
                if metric not in task.decoded_metrics:
                    what = (
                        f"metric {metric!r} is not computed by model type '{task.name}'"
                        if metric in metrics.METRICS
                        else f"unknown metric {metric!r}"
                    )
                    c.fail(
                        ("evaluation", "metrics"),
                        f"{what} (use: "
                        f"{', '.join(task.decoded_metrics) or 'none: leave it empty'})",
                    )
    with c.rule():
        _check_best_metric(c, cfg, task)


def _check_needs_dev(c: _Checker, cfg: ExperimentConfig) -> None:
    """Early stopping and a chosen best metric act on dev evaluations: no dev set, none."""
    e = cfg.evaluation
    if cfg.data.dev is not None:
        return
    if e.early_stopping_patience:
        c.fail(
            ("evaluation", "early_stopping_patience"),
            "early stopping acts on dev-set evaluations, but data.dev is not set (nothing "
            "is evaluated during training); add a data.dev corpus or set it to 0",
        )
    elif e.best_metric != type(e)().best_metric:  # a choice, not the default
        c.fail(
            ("evaluation", "best_metric"),
            f"{e.best_metric!r} picks the best checkpoint on the dev set, but data.dev is not "
            f"set (no best checkpoint can be chosen); add a data.dev corpus or remove the key",
        )


def _check_best_metric(c: _Checker, cfg: ExperimentConfig, task) -> None:
    e = cfg.evaluation
    computed = task.metric_names(cfg)
    if e.best_metric not in computed:
        known = e.best_metric in metrics.METRICS
        why = (
            f"is not computed for this experiment (model type '{task.name}', "
            f"evaluation.metrics={list(task.chosen_metrics(cfg))})"
            if known
            else "is not a metric"
        )
        also = [("evaluation", "early_stopping_patience")] if e.early_stopping_patience else []
        c.fail(
            ("evaluation", "best_metric"),
            f"{e.best_metric!r} {why}; it computes: {', '.join(computed)}",
            *also,
        )
        return
    _check_needs_dev(c, cfg)


def _check_model(c: _Checker, cfg: ExperimentConfig, task) -> None:
    """The model section: keys the family reads, widths, experts, conditions, lengths."""
    m = cfg.model
    with c.rule():
        _check_model_keys(c, cfg, task)
    with c.rule():
        if m.d_model % m.num_heads:
            c.fail(
                ("model", "num_heads"),
                f"d_model ({m.d_model}) must be divisible by num_heads ({m.num_heads})",
                ("model", "d_model"),
            )
        elif m.position_encoding == "rope" and (m.d_model // m.num_heads) % 2:
            c.fail(
                ("model", "position_encoding"),
                f"rope needs an even head size; d_model / num_heads = {m.d_model // m.num_heads}",
            )
    with c.rule():
        if m.num_experts and m.experts_top_k > m.num_experts:
            c.fail(
                ("model", "experts_top_k"),
                f"must be <= num_experts ({m.num_experts}); got {m.experts_top_k}",
                ("model", "num_experts"),
            )
    with c.rule():
        if m.num_conditions and m.condition_dim:
            c.fail(
                ("model", "condition_dim"),
                "set num_conditions (tags) or condition_dim (vectors), not both",
            )
    with c.rule():
        task.check_config(cfg, c.fail)
    for path in LENGTH_CAPS:
        with c.rule():
            value = getattr(getattr(cfg, path[0]), path[1])
            if value > m.max_length:
                origin = c.origin(("model", "max_length"))
                c.fail(
                    path,
                    f"must be <= model.max_length ({m.max_length}, {origin}); got {value}",
                    ("model", "max_length"),
                )


# Lengths bounded by model.max_length; left at their default, they follow it (`follow_model`).
LENGTH_CAPS = (
    ("data", "max_source_length"),
    ("data", "max_target_length"),
    ("decoding", "max_length"),
)


def follow_model(cfg: ExperimentConfig, prov: Provenance) -> None:
    """Lowers the `LENGTH_CAPS` the user did not set to a smaller model.max_length.

    Their defaults (256) suit the default model; a user who sets `model.max_length: 64`
    means every length to stay within it, and only a value the user set can conflict.
    """
    for path in LENGTH_CAPS:
        with contextlib.suppress(typed.InvalidValueUsed):
            section = getattr(cfg, path[0])
            if not prov.explicit(path) and getattr(section, path[1]) > cfg.model.max_length:
                setattr(section, path[1], cfg.model.max_length)


def _check_data(c: _Checker, cfg: ExperimentConfig, task) -> None:
    d = cfg.data
    with c.rule():
        if not d.train:
            c.fail(("data", "train"), "needs at least one training corpus")
    with c.rule():
        for i, corpus in enumerate(d.train):
            _check_corpus(c, corpus, ("data", "train", i), task)
    for split in ("dev", "test"):
        with c.rule():
            corpus = getattr(d, split)
            if corpus is not None:
                _check_corpus(c, corpus, ("data", split), task)
    with c.rule():
        if d.service is not None:
            parts = [part.strip() for part in d.service.split(",")]
            if not all(re.fullmatch(r"grpc://[^\s:/]+:\d{1,5}", p) for p in parts):
                c.fail(
                    ("data", "service"),
                    f"{d.service!r} is not a dispatcher address; write it as "
                    f"grpc://host:port (see `kerastx data-service`)",
                )
            elif d.stream == "memory":
                c.fail(
                    ("data", "service"),
                    "a tf.data service feeds streamed corpora only; set data.stream: stream "
                    "(or auto), or leave data.service out",
                    ("data", "stream"),
                )


def _check_training(c: _Checker, cfg: ExperimentConfig) -> None:
    t = cfg.training
    with c.rule():
        steps = t.profile_steps
        if steps and (len(steps) != 2 or steps[0] > steps[1]):
            c.fail(
                ("training", "profile_steps"),
                f"must be [first, last] with first <= last; got {steps}",
            )
    with c.rule():
        for part in t.init_parts:
            with c.rule():
                if part not in INIT_PARTS:
                    c.fail(
                        ("training", "init_parts"),
                        f"unknown part {part!r} (use: {', '.join(INIT_PARTS)})",
                    )
    with c.rule():
        if t.init_parts and not t.init_from:
            c.fail(("training", "init_parts"), "needs training.init_from")
    with c.rule():
        if t.weight_decay and t.optimizer != "adamw":
            c.fail(
                ("training", "weight_decay"),
                f"only the adamw optimizer applies weight decay; optimizer is '{t.optimizer}'",
            )


def _check_decoding_and_distribution(c: _Checker, cfg: ExperimentConfig) -> None:
    dec, dist = cfg.decoding, cfg.distribution
    with c.rule():
        if dec.strategy == "beam" and dec.n_best > dec.beam_size:
            c.fail(
                ("decoding", "n_best"),
                f"must be <= beam_size ({dec.beam_size}); got {dec.n_best}",
                ("decoding", "beam_size"),
            )
    with c.rule():
        if dist.devices and dist.strategy not in ("one_device", "mirrored"):
            c.fail(
                ("distribution", "devices"),
                f"only read by one_device and mirrored; strategy is '{dist.strategy}'",
            )
    with c.rule():
        if dist.strategy == "one_device" and len(dist.devices) > 1:
            c.fail(("distribution", "devices"), f"one_device takes one device; got {dist.devices}")


def validate(cfg: ExperimentConfig, prov: Provenance, errors: list[str] | None = None) -> None:
    """Checks the rules that involve several fields (the family's own rules included).

    Args:
        cfg: ExperimentConfig. Fields that failed typing hold a `typed.Invalid`; the
            rules that read one are skipped.
        prov: Provenance. Where each value was set.
        errors: list of str or None. Problems found before (typing), reported first.

    Raises:
        ConfigError: every earlier problem and every broken rule, one line each, naming
            the key and its file:line.
    """
    c = _Checker(prov)
    c.errors.extend(errors or [])
    try:
        task = tasks.get(cfg.model.type)
    except typed.InvalidValueUsed:
        task = typed.Invalid(("model", "type"))  # the family's rules are skipped
    for check in (_check_model, _check_data, _check_metrics):
        with c.rule():
            check(c, cfg, task)
    for check in (_check_training, _check_decoding_and_distribution):
        with c.rule():
            check(c, cfg)
    if c.errors:
        raise ConfigError(list(dict.fromkeys(c.errors)))  # a problem repeated is said once
