"""kerastx: Transformer training on TensorFlow 2.21 and Keras 3, driven by YAML experiments.

Importing the package checks, without importing TensorFlow, that the installed
`tensorflow` and `tensorflow-text` come from the same minor release: their compiled ops
share an ABI, and a mismatch otherwise shows up later as an obscure
`undefined symbol` error deep inside the first tokenizer call.
"""

from __future__ import annotations

import os
from importlib import metadata

__version__ = "0.1.0"

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it (the CLI quiets
# more, and needs to know whether the level is the user's).
TF_LOG_LEVEL_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUPPORTED_TF = (2, 21)


class VersionMismatchError(ImportError):
    """TensorFlow and tensorflow-text are missing or from different releases."""


def _minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


def check_versions(
    tf_version: str | None = None, text_version: str | None = None
) -> tuple[str, str]:
    """Checks that TensorFlow and tensorflow-text are installed and match.

    Args:
        tf_version: str or None. Version to check instead of the installed one (tests).
        text_version: str or None. Same, for tensorflow-text.

    Returns:
        The two version strings.

    Raises:
        VersionMismatchError: a package is missing or the minor versions differ.
    """
    found = {}
    for name, given in (("tensorflow", tf_version), ("tensorflow-text", text_version)):
        if given is None:
            try:
                given = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise VersionMismatchError(
                    f"kerastx needs {name} {SUPPORTED_TF[0]}.{SUPPORTED_TF[1]}.x but it is not "
                    f"installed; run `make install` (or pip install -e .)."
                ) from None
        found[name] = given
    tf_v, text_v = found["tensorflow"], found["tensorflow-text"]
    if _minor(tf_v) != _minor(text_v):
        raise VersionMismatchError(
            f"tensorflow {tf_v} and tensorflow-text {text_v} come from different releases; "
            f"their ops will not load together. Install matching versions, e.g. "
            f"pip install tensorflow=={SUPPORTED_TF[0]}.{SUPPORTED_TF[1]}.* "
            f"tensorflow-text=={SUPPORTED_TF[0]}.{SUPPORTED_TF[1]}.*"
        )
    if _minor(tf_v) != SUPPORTED_TF:
        raise VersionMismatchError(
            f"kerastx supports tensorflow {SUPPORTED_TF[0]}.{SUPPORTED_TF[1]}.x; found {tf_v}."
        )
    return tf_v, text_v


check_versions()


def __getattr__(name: str):
    """`kerastx.Experiment` (the Python API, `kerastx.workflow`), imported on first use
    so that `import kerastx` (and `kerastx validate`) do not import TensorFlow."""
    if name == "Experiment":
        from kerastx.workflow import Experiment

        return Experiment
    raise AttributeError(f"module 'kerastx' has no attribute {name!r}")
