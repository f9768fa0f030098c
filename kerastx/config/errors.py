"""The error every user mistake in an experiment turns into."""

from __future__ import annotations

from kerastx.errors import KerastxError


class ConfigError(KerastxError, ValueError):
    """A mistake in an experiment file or override.

    Each message is one line naming where the problem is (`file:line: key.path: ...`).
    Several problems found in one pass are kept together, one line each.

    Args:
        messages: str or list of str. One line per problem.
    """

    def __init__(self, messages: str | list[str]):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))
