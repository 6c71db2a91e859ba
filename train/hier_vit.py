"""Hier-ViT, the H-CAST paper's baseline: a plain ViT with one head per taxonomy level.

Each head reads the [CLS] token after the block at the same share of the network's depth as
H-CAST's head for that level reads it in CAST (2 levels: after 9 and 11 of cast_tiny's 11 blocks;
3 levels: after 6, 9 and 11), through the ViT's final norm (every level normed). ``forward``
returns the per-level logits, fine -> coarse, like :class:`cast.HCAST`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["HierViT", "read_blocks"]

# The share of CAST's blocks (depths 3-3-3-2) done when each H-CAST head reads, fine -> coarse.
_SHARES = {2: (9 / 11, 11 / 11), 3: (6 / 11, 9 / 11, 11 / 11)}


def read_blocks(depth: int, levels: int) -> tuple[int, ...]:
    """0-based indices of the blocks whose output each level's head reads."""
    if levels not in _SHARES:
        raise ValueError(f"Hier-ViT takes 2 or 3 taxonomy levels, got {levels}")
    return tuple(max(0, round(depth * share) - 1) for share in _SHARES[levels])


class HierViT(nn.Module):
    """A timm ViT (built headless) with per-level heads; see the module's doc."""

    def __init__(self, vit: nn.Module, level_classes: Sequence[int]) -> None:
        super().__init__()
        self.vit = vit
        self.level_classes = [int(n) for n in level_classes]
        self.num_classes = self.level_classes[0]
        self.reads = read_blocks(len(vit.blocks), len(self.level_classes))  # type: ignore[arg-type]
        width = int(vit.num_features)
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in self.level_classes)
        for head in self.heads:
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()} if hasattr(self.vit, "no_weight_decay") else set()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v: Any = self.vit
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(images))))
        read: list[torch.Tensor] = []
        for i, block in enumerate(v.blocks):
            x = block(x)
            if i in self.reads:
                read.append(v.norm(x)[:, 0])
        return tuple(head(cls) for head, cls in zip(self.heads, read))
