"""Errors with messages meant for people: every expected failure of loading or reading input."""

from __future__ import annotations

__all__ = [
    "CastError", "CastLoadError", "UnsafeCheckpointError", "CheckpointFormatError",
    "CheckpointMismatchError", "WeightsNotAvailableError", "ImageReadError",
]


class CastError(Exception):
    """Base of the errors this library raises on purpose."""


class CastLoadError(CastError):
    """A model could not be loaded."""


class UnsafeCheckpointError(CastLoadError):
    """The checkpoint pickle needs code other than tensors and plain containers; nothing was run."""


class CheckpointFormatError(CastLoadError):
    """The file is not a checkpoint we can read (corrupt, truncated, or another format)."""


class CheckpointMismatchError(CastLoadError, ValueError):
    """A state dict whose keys or shapes do not fit the model; the message names them."""


class WeightsNotAvailableError(CastLoadError):
    """The weights are not here and cannot be fetched (offline and not cached, unknown name, ...)."""


class ImageReadError(CastError, ValueError):
    """An input that is not a readable image, or one we refuse (too large, too small)."""
