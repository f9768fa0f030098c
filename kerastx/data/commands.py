"""Library functions behind `kerastx vocab` and `kerastx data-stats`."""

from __future__ import annotations

import contextlib
import os
import shutil

from kerastx.config.rundir import check_run_dir
from kerastx.data.stats import data_stats, format_stats


@contextlib.contextmanager
def _removed_on_failure(path: str):
    """Removes `path` again, with the parents this block created, if the block fails.

    A command that fails must not leave a run directory behind: a later `train` would
    find a half-made run (e.g. vocabularies from data it then refuses).
    """
    top = None  # the outermost directory on the way to `path` that does not exist yet
    current = os.path.abspath(path)
    while not os.path.exists(current):
        top = current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    try:
        yield
    except BaseException:
        if top is not None and os.path.isdir(top):
            shutil.rmtree(top, ignore_errors=True)
        raise


def run_vocab(cfg) -> int:
    """Builds (or finds) the experiment's vocabularies and prints where they are."""
    check_run_dir(cfg.run_dir)  # a foreign or unwritable directory gets no vocab/
    from kerastx.data.module import build_data

    with _removed_on_failure(os.path.join(cfg.run_dir, "vocab")):
        # Through build_data: streamed corpora build from their bounded sample.
        paths = build_data(cfg).paths
    for name, path in paths.items():
        if path:
            print(f"{name}: {path}")
    return 0


def run_data_stats(cfg) -> int:
    """Prints counts, length histograms, OOV rate and the padding of the batching.

    Every corpus is read before a vocabulary is written; the run directory is created
    only to hold vocabularies that must be built, and what was created (the run
    directory, or its `vocab/`) is removed again if a later step fails. A run
    directory training would refuse (`config.rundir.check_run_dir`) is refused here too.
    """
    check_run_dir(cfg.run_dir)
    with _removed_on_failure(os.path.join(cfg.run_dir, "vocab")):
        stats = data_stats(cfg)
    print(format_stats(stats))
    return 0
