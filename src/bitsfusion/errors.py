"""The error hierarchy: every failure a user can cause is a ``BitsFusionError``.

Messages name the thing at fault (file, tensor, layer, argument) and the fix, so a
user never has to read a traceback into our internals to know what to do.
"""

from __future__ import annotations

__all__ = [
    "BitsFusionError",
    "ConfigError",
    "FormatError",
    "UnsupportedLayer",
    "BudgetInfeasible",
    "KernelUnavailable",
]


class BitsFusionError(Exception):
    """Base class of every error BitsFusion raises on purpose."""


class ConfigError(BitsFusionError, ValueError):
    """An invalid scheme, plan, budget or CLI argument."""


class FormatError(BitsFusionError):
    """A corrupt, truncated, mismatched or future-version artifact.

    ``path`` is the file at fault and ``tensor`` the tensor or manifest key, when known;
    both appear in the message.
    """

    def __init__(self, message: str, *, path: object = None, tensor: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if tensor is not None:
            where.append(f"tensor '{tensor}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.tensor = tensor


class UnsupportedLayer(BitsFusionError):
    """A layer type or shape that no registered quantized module can take."""


class BudgetInfeasible(BitsFusionError):
    """No plan satisfies the budget (even at the lowest allowed bits)."""


class KernelUnavailable(BitsFusionError):
    """A requested native kernel or ISA path is not built or not supported here."""
