"""What every model family's timm factory shares (timm's ``build_model_with_cfg`` plus the options
our families need): the device and dtype to create on, the input size stated in the pretrained cfg,
the feature options, and the one extra class the published DeiT files need to unpickle."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from .features import feature_options

__all__ = ["build"]


def build(model_cls: type[nn.Module], variant: str, pretrained: bool, *, filter_fn: Callable[..., Any],
          default_out_indices: Any, traceable: bool, **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` for one of our families.

    - ``device`` / ``dtype``: every parameter and buffer is created on ``device`` (``"meta"`` included:
      construction never reads a tensor's value) and converted to ``dtype``;
    - ``img_size`` other than the pretrained cfg's: the model's ``pretrained_cfg`` states the size it
      was built for, so timm's data config resizes to it;
    - ``features_only`` with ``out_indices`` / ``feature_cls`` / ``feature_cfg``: see :mod:`.features`
      (``default_out_indices`` is the family's default, ``traceable`` whether torch.fx can trace it);
    - unknown keyword arguments reach the model's constructor, which raises ``TypeError``.
    """
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    feature_cfg = feature_options(kwargs, default_out_indices, traceable)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if kwargs.get("img_size") is not None:
        # the spatial size only: the channel count stays the weights' (timm adapts the first conv from it)
        channels = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay).input_size[0]
        size = kwargs["img_size"]
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        overlay.setdefault("input_size", (channels, side, side))
    # The published DeiT files carry their training arguments as an argparse.Namespace; allow that
    # one plain-data class in timm's weights_only unpickling, nothing else.
    with torch.serialization.safe_globals([argparse.Namespace]), \
            (torch.device(device) if device is not None else contextlib.nullcontext()):
        model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
                                     pretrained_cfg_overlay=overlay or None, feature_cfg=feature_cfg, **kwargs)
    if dtype is not None:
        model.to(dtype)
    return model
