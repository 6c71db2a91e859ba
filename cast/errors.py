"""Errors with messages meant for people: every expected failure of loading or reading input.

Every error carries two texts: ``str(error)`` is the full message (what happened and what to do),
``error.short`` a one-line summary for places with little room (a toast in the app, a status line).
Raise sites that know a better summary pass ``short=``; otherwise the class's ``default_short`` is used.
"""

from __future__ import annotations

__all__ = [
    "CastError", "CastLoadError", "UnsafeCheckpointError", "CheckpointFormatError",
    "CheckpointMismatchError", "WeightsNotAvailableError", "ImageReadError",
]


class CastError(Exception):
    """Base of the errors this library raises on purpose."""

    default_short = "something went wrong"

    def __init__(self, message: str = "", *, short: str | None = None) -> None:
        super().__init__(message)
        self.short: str = short or self.default_short


class CastLoadError(CastError):
    """A model could not be loaded."""

    default_short = "the model could not be loaded"


class UnsafeCheckpointError(CastLoadError):
    """The checkpoint pickle needs code other than tensors and plain containers; nothing was run."""

    default_short = "the checkpoint file asks to run code and was refused"


class CheckpointFormatError(CastLoadError):
    """The file is not a checkpoint we can read (corrupt, truncated, or another format)."""

    default_short = "not a checkpoint file this library can read"


class CheckpointMismatchError(CastLoadError, ValueError):
    """A state dict whose keys or shapes do not fit the model; the message names them."""

    default_short = "the checkpoint does not fit the model"


class WeightsNotAvailableError(CastLoadError):
    """The weights are not here and cannot be fetched (offline and not cached, unknown name, ...)."""

    default_short = "the weights are not available here"


class ImageReadError(CastError, ValueError):
    """An input that is not a readable image, or one we refuse (too large, too small)."""

    default_short = "not an image we can read"
