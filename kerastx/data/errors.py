"""The error every problem in the user's data turns into."""

from __future__ import annotations

from kerastx.errors import KerastxError


class DataError(KerastxError, ValueError):
    """A problem in a data or vocabulary file, or in how the data section uses it.

    The message is one line naming the file (and line, where one applies), e.g.
    `data/train.src:17: invalid UTF-8 (byte 0xff at column 3); ...`.
    """
