"""User-facing errors.

Every problem caused by the user's input (paths, names, columns, values) raises
:class:`TransferLMError`. The CLI prints its message as one line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TransferLMError(Exception):
    """An error in the user's input, with a one-line message that names the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line: the CLI contract is "a clear one-line error".
        super().__init__(" ".join(str(message).split()))


class DataError(TransferLMError):
    """Bad or missing data: files, columns, labels, splits."""


class ConfigError(TransferLMError):
    """A bad option or configuration value."""


class ModelError(TransferLMError):
    """A model that cannot be found, installed or loaded."""


class CheckpointError(TransferLMError):
    """A checkpoint that is missing, corrupt or does not match the model."""
