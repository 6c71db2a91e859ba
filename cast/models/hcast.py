"""H-CAST: CAST with one classifier per taxonomy level, finer classes read from finer segment stages.

Park, Zhang, Yu, Beery, Huang, "Visually Consistent Hierarchical Image Classification", ICLR 2025.
The backbone is CAST's, unchanged (:class:`~.cast.CAST`); what differs is where the classes are read
(facts copied to ``docs/architecture.md``, section H-CAST):

- ``level_classes``: classes per taxonomy level, fine -> coarse, 2 or 3 levels (the published code's
  ``nb_classes``); ``num_classes`` is the fine level's;
- heads under the published names: ``head`` (fine), ``family_head``, ``manufacturer_head`` (3 levels);
- where they read (stage ``s`` = the output of stage ``s``'s blocks, before its pooling):
  3 levels: fine <- stage 2 (the 64 level-1 segments), middle <- stage 3 (32), coarse <- stage 4 (16);
  2 levels: fine <- stage 3, coarse <- stage 4. Only stage 4's [CLS] goes through ``norm``; the others
  are the raw [CLS]. No head reads the superpixel stage or the 8-segment level.

``forward`` returns the tuple of per-level logits, fine -> coarse (a headless model: the pooled
feature, as timm's contract asks). :meth:`HCAST.forward_hierarchy` adds, to CAST's tree, each head's
logits and every segment's own prediction through the head of the level it lives at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model

from .builder import build
from .cast import CAST, VARIANTS, _cfg, variant_of
from .convert import check_fits, unwrap_training_file

__all__ = ["HCAST", "HEAD_NAMES", "HCAST_VARIANTS", "READ_STAGES", "hcast_checkpoint_filter_fn", "level_classes_of"]

HEAD_NAMES = ("head", "family_head", "manufacturer_head")  # fine -> coarse, the published key names
# 0-based stage whose [CLS] each level's head reads, fine -> coarse, by number of levels. Stage s works
# on the level-s segments (stage 0 on the superpixels), so these are also the tree levels the heads answer.
READ_STAGES: dict[int, tuple[int, ...]] = {3: (1, 2, 3), 2: (2, 3)}


class HCAST(CAST):
    """CAST with per-taxonomy-level heads (see the module's doc); every other argument is CAST's.

    Args:
        level_classes: classes per level, fine -> coarse (2 or 3 levels).
        num_classes: the fine level's classes (default ``level_classes[0]``; another value replaces
            it, as timm's ``num_classes`` does); 0 builds the model without heads.
    """

    def __init__(self, level_classes: Sequence[int] = (1000, 100), num_classes: int | None = None, **kwargs: Any) -> None:
        level_classes = [int(n) for n in level_classes]
        if len(level_classes) not in READ_STAGES or min(level_classes) < 1:
            raise ValueError(f"level_classes needs 2 or 3 positive class counts (fine -> coarse), got {level_classes}")
        if num_classes is not None and num_classes > 0:
            level_classes[0] = int(num_classes)
        headless = num_classes == 0
        super().__init__(num_classes=0 if headless else level_classes[0], **kwargs)
        self.level_classes = level_classes
        self.model_args["level_classes"] = list(level_classes)
        self.read_stages = READ_STAGES[len(level_classes)]
        like = self.cls_token
        for name, n in zip(HEAD_NAMES[1:], level_classes[1:]):
            setattr(self, name, nn.Identity() if headless else nn.Linear(self.embed_dim, n, device=like.device, dtype=like.dtype))
        for head in self.heads:
            _init_head(head)

    # -- heads -----------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.level_classes)

    @property
    def heads(self) -> list[nn.Module]:
        """The heads, fine -> coarse (``nn.Identity`` when the model has none)."""
        return [getattr(self, n) for n in HEAD_NAMES[: self.num_levels]]

    @property
    def has_heads(self) -> bool:
        return self.num_classes > 0

    @property
    def tree_levels(self) -> tuple[int, ...]:
        """The tree level (1 = 64 segments, 2 = 32, 3 = 16) each taxonomy level is read from."""
        return self.read_stages

    def reset_classifier(self, num_classes: int | Sequence[int], global_pool: str | None = None) -> None:
        """New heads. ``num_classes``: 0 removes every head; an int gives the fine level a new head for
        that many classes (the coarser heads stay, or come back fresh at their sizes if removed); a
        sequence gives every level a new head (same number of levels)."""
        like = self.cls_token
        if isinstance(num_classes, Sequence):
            counts = [int(n) for n in num_classes]
            if len(counts) != self.num_levels:
                raise ValueError(f"{len(counts)} class counts for a {self.num_levels}-level model")
            fresh = set(range(1, self.num_levels))
        else:
            counts = [int(num_classes), *self.level_classes[1:]]
            fresh = {i for i, h in enumerate(self.heads) if i > 0 and not isinstance(h, nn.Linear)}
        super().reset_classifier(counts[0], global_pool)  # the fine head, pooling, device, dtype, mode
        if counts[0] == 0:
            for name in HEAD_NAMES[1: self.num_levels]:
                setattr(self, name, nn.Identity())
            return
        self.level_classes = counts
        self.model_args["level_classes"] = list(counts)
        _init_head(self.head)
        for i in sorted(fresh):
            head = nn.Linear(self.embed_dim, counts[i], device=like.device, dtype=like.dtype)
            _init_head(head)
            head.train(self.training)
            setattr(self, HEAD_NAMES[i], head)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """CAST's pruning; keeping the heads needs every stage they read."""
        from timm.models._features import feature_take_indices

        _, max_index = feature_take_indices(self.num_stages, indices)
        if not prune_head and self.has_heads and max_index < max(self.read_stages):
            raise ValueError(f"the heads read stages {[s + 1 for s in self.read_stages]}; keeping them needs every "
                             "stage up to the last (prune_head=True drops them)")
        return super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)  # its reset is ours

    # -- forward -----------------------------------------------------------------------------------
    def _read_levels(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each head on its stage's pooled token (``outputs``: every stage's ``[B, 1 + N, C]``)."""
        last = len(self.depths) - 1
        logits = []
        for head, stage in zip(self.heads, self.read_stages):
            y = self.norm(outputs[stage]) if stage == last else outputs[stage]
            logits.append(head(self.head_drop(self._pool(y))))
        return logits

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``x``: the normed final tokens (:meth:`forward_features`) -> the pooled feature, or the
        coarsest head's logits (the one head that reads them; :meth:`forward` gives every level)."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.heads[-1](x)

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor,
                num_superpixels: int | None = None) -> tuple[torch.Tensor, ...] | torch.Tensor:
        """Per-level logits ``([B, level_classes[0]], ..., [B, level_classes[-1]])``, fine -> coarse; the
        pooled final feature ``[B, C]`` for a model without heads."""
        if not self.has_heads:
            return self.forward_head(self.forward_features(images, superpixels, num_superpixels))
        return tuple(self._read_levels(self._stage_outputs(images, superpixels, num_superpixels)))

    def _stage_outputs(self, images: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int | None) -> list[torch.Tensor]:
        """Every stage's ``[B, 1 + N, C]`` output (the heads need all of them)."""
        if self.num_stages < len(self.depths):
            raise RuntimeError("the heads need every stage, and this model was pruned")
        x, cls, padding, _ = self.embed_segments(images, superpixels, num_superpixels)
        return [y for y, _ in self._run_stages(x, cls, padding)]

    def _read_heads(self, features: torch.Tensor, stage_outputs: list[torch.Tensor], segment_tokens: list[torch.Tensor],
                    segment_features: list[torch.Tensor]) -> dict[str, Any]:
        """Per taxonomy level: its head on its stage's pooled token exactly as :meth:`forward` reads it, the
        tree level it reads, and each segment of that level through the same head (its own token after the
        same stage, normed like the head's input)."""
        if not self.has_heads:
            return dict(taxonomy_tree_levels=self.tree_levels)
        last = len(self.depths) - 1
        segment_logits = [head(segment_features[stage - 1] if stage == last else segment_tokens[stage - 1])
                          for head, stage in zip(self.heads, self.read_stages)]  # level-`stage` segments after its blocks
        level_logits = self._read_levels(stage_outputs)
        return dict(logits=level_logits[0], taxonomy_logits=level_logits, taxonomy_tree_levels=self.tree_levels,
                    segment_taxonomy_logits=segment_logits)

    def classify_embed(self, images: torch.Tensor, superpixels: torch.Tensor,
                       num_superpixels: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The fine head's logits (None without heads) and the pooled final feature, in one pass."""
        if not self.has_heads:
            return None, self.forward(images, superpixels, num_superpixels)  # type: ignore[return-value]
        outputs = self._stage_outputs(images, superpixels, num_superpixels)
        return self._read_levels(outputs)[0], self._pool(self.norm(outputs[-1]))

    def _variant_name(self) -> str | None:
        return variant_of(self.model_args, HCAST_VARIANTS)


def _init_head(head: nn.Module) -> None:
    """DeiT's classifier init (truncated normal, std 0.02; zero bias): the heads below the last stage read
    the raw [CLS] of the residual stream (norm about 50 at cast_tiny's stage 3 at initialisation), so a
    wider init would start them with large, confident logits."""
    if isinstance(head, nn.Linear) and not head.weight.is_meta:
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------------


def level_classes_of(sd: Mapping[str, torch.Tensor]) -> list[int] | None:
    """Classes per level read from a state dict's heads (None when it has no ``family_head``)."""
    if "family_head.weight" not in sd:
        return None
    return [int(sd[f"{n}.weight"].shape[0]) for n in HEAD_NAMES if f"{n}.weight" in sd]


def hcast_checkpoint_filter_fn(obj: Any, model: HCAST | None = None) -> dict[str, torch.Tensor]:
    """An H-CAST training file (DeiT dict with ``model``), a flat CAST file or a bare state dict ->
    our state dict. With ``model``, heads that do not fit it are dropped (the model keeps its freshly
    initialised ones, as when fine-tuning H-CAST from a flat CAST checkpoint) and everything else must
    fit exactly (:class:`CheckpointMismatchError` names what does not)."""
    sd = unwrap_training_file(obj)
    if model is None:
        return sd
    expected = model.state_dict()
    heads = tuple(f"{n}.{p}" for n in HEAD_NAMES for p in ("weight", "bias"))
    sd = {k: v for k, v in sd.items() if k not in heads or (k in expected and expected[k].shape == v.shape)}
    check_fits(sd, model, lenient=heads)
    return sd


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

# Backbones are CAST's variants; the default taxonomy sizes are what the variant is used with:
# PartShapes' 10 classes in 3 groups for ours, iNat21-mini's species / family / order for cast_small
# (the published H-CAST checkpoint's layout).
HCAST_VARIANTS: dict[str, dict[str, Any]] = {
    "hcast_tiny": dict(VARIANTS["cast_tiny"], level_classes=(10, 3)),
    "hcast_small": dict(VARIANTS["cast_small"], level_classes=(10000, 1103, 273)),
}


def _hcfg(level_classes: Sequence[int]) -> dict[str, Any]:
    return _cfg(num_classes=level_classes[0], classifier="head", paper_ids="arXiv:2406.11608",
                paper_name="Visually Consistent Hierarchical Image Classification", origin_url="https://github.com/pseulki/hcast")


default_cfgs = generate_default_cfgs({name: _hcfg(v["level_classes"]) for name, v in HCAST_VARIANTS.items()})


def _create_hcast(variant: str, pretrained: bool = False, **kwargs: Any) -> HCAST:
    """Build a variant through timm (:func:`.builder.build`); ``level_classes`` (fine -> coarse) sets the
    taxonomy sizes, ``num_classes`` the fine level's (0: no heads), learned positions by default (the
    published H-CAST models are DeiT-trained)."""
    kwargs = {**HCAST_VARIANTS[variant], "pos_embed": "learned", **kwargs}
    if kwargs.get("global_pool") == "":
        raise ValueError("H-CAST has no unpooled classifier input; use global_pool 'token' or 'avg', or forward_features")
    # num_classes always given (HCAST reads it as the fine level's): timm would otherwise fill in the cfg's
    kwargs.setdefault("num_classes", None)
    return build(HCAST, variant, pretrained, filter_fn=hcast_checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3),
                 traceable=False, **kwargs)  # type: ignore[return-value]


@register_model
def hcast_tiny(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """Ours: cast_tiny's backbone with per-level heads (default: 10 classes in 3 groups, PartShapes)."""
    return _create_hcast("hcast_tiny", pretrained, **kwargs)


@register_model
def hcast_small(pretrained: bool = False, **kwargs: Any) -> HCAST:
    """H-CAST-S: cast_small's backbone with per-level heads (default: iNat21-mini's 10000 / 1103 / 273)."""
    return _create_hcast("hcast_small", pretrained, **kwargs)
