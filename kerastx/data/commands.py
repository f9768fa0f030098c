"""Library functions behind `kerastx vocab` and `kerastx data-stats`."""

from __future__ import annotations

from kerastx.data.building import build_vocabularies
from kerastx.data.stats import data_stats, format_stats


def run_vocab(cfg) -> int:
    """Builds (or finds) the experiment's vocabularies and prints where they are."""
    paths = build_vocabularies(cfg)
    for name, path in paths.items():
        if path:
            print(f"{name}: {path}")
    return 0


def run_data_stats(cfg) -> int:
    """Prints counts, length histograms, OOV rate and the padding of the batching."""
    print(format_stats(data_stats(cfg)))
    return 0
