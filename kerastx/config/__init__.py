"""Typed experiment configs: sections, loading, validation, schema.

Typical use::

    from kerastx import config
    cfg, prov = config.load_experiment(["experiments/quickstart.yaml"],
                                       overrides=["training.train_steps=100"])
"""

from kerastx.config.errors import ConfigError
from kerastx.config.explain import explain, json_schema
from kerastx.config.loader import Provenance, defaults_data, diff_from_defaults, load_experiment
from kerastx.config.rundir import CONFIG_FILE, resolved_yaml, write_resolved
from kerastx.config.sections import (
    CorpusConfig,
    DataConfig,
    DecodingConfig,
    DistributionConfig,
    EvaluationConfig,
    ExperimentConfig,
    ExportConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
)

__all__ = [
    "CONFIG_FILE",
    "ConfigError",
    "CorpusConfig",
    "DataConfig",
    "DecodingConfig",
    "DistributionConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "ExportConfig",
    "ModelConfig",
    "Provenance",
    "TokenizerConfig",
    "TrainingConfig",
    "defaults_data",
    "diff_from_defaults",
    "explain",
    "json_schema",
    "load_experiment",
    "resolved_yaml",
    "write_resolved",
]
