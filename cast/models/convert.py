"""What every model family's ``checkpoint_filter_fn`` shares: finding the backbone inside a
published training file, and a strict check of a state dict against a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointMismatchError

__all__ = ["unwrap_training_file", "check_fits", "adapt_for_timm"]

MOCO_PREFIX = "module.base_encoder."  # MoCo-v3 files: the query encoder we keep


def unwrap_training_file(obj: Any) -> dict[str, torch.Tensor]:
    """The backbone state dict inside whatever ``torch.load`` returned for a published file.

    MoCo-v3 files (``state_dict`` with ``module.base_encoder.*``; the projector ``head.*``, the
    momentum encoder and the predictor are training-only and dropped), DeiT files (``model``) and
    bare state dicts; a ``module.`` prefix (DataParallel) is removed. Non-tensor entries are dropped.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"expected a dict from the checkpoint file, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # MoCo-v3 training file
        sd = obj["state_dict"]
        if any(k.startswith(MOCO_PREFIX) for k in sd):
            sd = {k[len(MOCO_PREFIX):]: v for k, v in sd.items()
                  if k.startswith(MOCO_PREFIX) and not k[len(MOCO_PREFIX):].startswith("head.")}
        else:
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
    elif "model" in obj and isinstance(obj["model"], Mapping):  # DeiT training file
        sd = {k.removeprefix("module."): v for k, v in obj["model"].items()}
    else:
        sd = {k.removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def adapt_for_timm(sd: dict[str, torch.Tensor], model: nn.Module, classifier: str = "head",
                   first_conv: str = "patch_embed.proj.0") -> dict[str, torch.Tensor]:
    """What timm adapts after filtering, left for it to adapt: a classifier that does not fit the
    model's head (another number of classes, or none) is dropped, and a first convolution with
    another number of input channels is passed through for timm's ``adapt_input_conv``."""
    expected = model.state_dict()
    for key in (f"{classifier}.weight", f"{classifier}.bias"):
        if key in sd and (key not in expected or expected[key].shape != sd[key].shape):
            sd = {k: v for k, v in sd.items() if k != key}
    return sd


def check_fits(sd: Mapping[str, torch.Tensor], model: nn.Module, lenient: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` naming every missing, unexpected or mis-shaped key
    (keys in ``lenient`` may be missing or shaped differently)."""
    expected = {k: v for k, v in model.state_dict().items() if k not in lenient}
    sd = {k: v for k, v in sd.items() if k not in lenient}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong_shape = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    if missing:
        parts.append(f"missing {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected {_short(unexpected)}")
    if wrong_shape:
        parts.append("wrong shape " + _short([f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape]))
    raise CheckpointMismatchError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(parts))


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
