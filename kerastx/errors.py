"""The base class of every error that is the user's to fix (bad config, bad data, ...)."""

from __future__ import annotations


class KerastxError(Exception):
    """A problem in the user's input: the CLI prints it (one line per problem), exits 2.

    Subclasses that mean something else set `exit_code` (training preempted: 75).
    """

    exit_code = 2
