"""``features_only=True`` for our model families, the way timm's ``build_model_with_cfg`` does it.

timm picks a feature wrapper by ``feature_cls``; its wrappers call ``model(x)`` or
``model.forward_intermediates(x)`` with the image alone. CAST also needs the superpixels, so the
wrappers here take whatever inputs the model's forward takes and pass them on:

- ``"getter"`` (the default), ``"list"``, or timm's ``FeatureGetterNet`` class: :class:`FeatureGetter`,
  the model's :meth:`forward_intermediates` at ``out_indices`` (``[B, C, h, w]`` maps, or ``[B, N, C]``
  tokens with ``output_fmt="NLC"``), after pruning what those stages do not need;
- ``"dict"``: the same, as a dict keyed by the stage module names (``"blocks1"`` ... for CAST);
- ``"hook"``: :class:`StageHooks`, forward hooks on those modules during the ordinary forward: each
  stage's raw output (for CAST ``[B, 1 + N_l, C]``, [CLS] first), as timm's hook extractor gives for ViTs;
- ``"fx"``: graph tracing, for models whose forward torch.fx can trace (the conv-stem ViT); CAST's
  forward depends on the superpixel values (farthest point sampling), so it is refused with a message;
- any other name: left to timm, which refuses it (``AssertionError: Unknown feature class``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from timm.models._features import FeatureGetterNet, FeatureHookNet

__all__ = ["FeatureGetter", "StageHooks", "feature_options"]


class FeatureGetter(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` for models whose forward takes more than the image.

    ``forward(*inputs, **kwargs)`` passes the inputs (CAST: ``images``, ``superpixels`` and an optional
    ``num_superpixels``) to ``model.forward_intermediates`` and returns the features of
    ``out_indices`` as a list, or a dict keyed by the stage module names when ``return_dict``.
    """

    def forward(self, *inputs: Any, **kwargs: Any) -> list[torch.Tensor] | dict[str, torch.Tensor]:
        features = self.model.forward_intermediates(
            *inputs, indices=self.out_indices, norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True,
            **kwargs,
        )
        if not self.return_dict:
            return features
        names = self.out_map or self.feature_info.module_name()
        return OrderedDict((str(n), f) for n, f in zip(names, features))


class StageHooks(FeatureHookNet):
    """timm's ``FeatureHookNet`` (hooks, model left as it is) for models whose forward takes more
    than the image: runs ``model(*inputs)`` and returns what the hooked stage modules output."""

    def __init__(self, model: nn.Module, out_indices: Any = (0, 1, 2, 3), out_map: Any = None,
                 return_dict: bool = False, output_fmt: str = "NCHW", default_hook_type: str = "forward") -> None:
        super().__init__(model, out_indices, out_map=out_map, return_dict=return_dict, output_fmt=output_fmt,
                         no_rewrite=True, default_hook_type=default_hook_type)

    def forward(self, *inputs: Any, **kwargs: Any) -> list[torch.Tensor] | dict[Any, torch.Tensor]:
        # the model's own grad checkpointing bypasses the stage modules' hooks; run them plainly here
        body = self["body"]
        checkpointing, body.grad_checkpointing = getattr(body, "grad_checkpointing", False), False
        try:
            body(*inputs, **kwargs)
        finally:
            body.grad_checkpointing = checkpointing
        out = self.hooks.get_output(inputs[0].device)
        return out if self.return_dict else list(out.values())


def feature_options(kwargs: dict[str, Any], out_indices: Any, traceable: bool) -> dict[str, Any]:
    """Take timm's feature options out of a model factory's ``kwargs`` (``out_indices``,
    ``feature_cls``, ``feature_cfg``; whether or not ``features_only`` is set, so they never reach the
    model's constructor) and return the ``feature_cfg`` for ``build_model_with_cfg``, with
    ``feature_cls`` resolved to a wrapper that passes every input on (see the module docstring).

    ``out_indices`` is the family's default; ``traceable`` says whether torch.fx can trace its forward.
    """
    cfg: dict[str, Any] = {"out_indices": out_indices, "feature_cls": "getter", **(kwargs.pop("feature_cfg", None) or {})}
    for key in ("out_indices", "feature_cls"):
        if key in kwargs:
            cfg[key] = kwargs.pop(key)
    cls = cfg["feature_cls"]
    name = cls.lower() if isinstance(cls, str) else None
    if name in ("getter", "list") or (isinstance(cls, type) and cls is FeatureGetterNet):
        cfg["feature_cls"] = FeatureGetter
    elif name == "dict":
        cfg.update(feature_cls=FeatureGetter, return_dict=True)
    elif name is not None and "hook" in name:  # timm reads any name containing "hook" as its hook extractor
        cfg["feature_cls"] = StageHooks
        cfg.pop("flatten_sequential", None)
        cfg.pop("no_rewrite", None)
    elif name == "fx" and not traceable:
        raise ValueError("feature_cls='fx' traces the forward with torch.fx, which cannot follow CAST's "
                         "superpixel-dependent pooling; use feature_cls='getter' (the default), 'dict' or 'hook'")
    return cfg
