"""Building blocks shared by the model families: the convolutional stem, the LayerNorm the blocks
use, and the fixed 2-D sine-cosine position embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ConvStem", "layer_norm", "sincos_pos_embed_2d"]


def layer_norm(dim: int, **kwargs: Any) -> nn.LayerNorm:
    """The LayerNorm of every transformer block here (eps 1e-6, as the published models)."""
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


class ConvStem(nn.Module):
    """Convolutional stem: 4 x (3x3 conv without bias, BatchNorm, ReLU), then a 1x1 conv.

    Channels go ``C/8 -> C/4 -> C/2 -> C -> C``. CAST uses strides ``(2, 2, 2, 1)`` (stride 8);
    MoCo-v3's conv-stem ViT uses ``(2, 2, 2, 2)`` (stride 16). Input ``[B, 3, H, W]``; output
    ``[B, H/s, W/s, C]`` (channels last). Module keys ``proj.{0,1,3,4,6,7,9,10,12}`` as in the
    published files.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 384, strides: Sequence[int] = (2, 2, 2, 1)) -> None:
        super().__init__()
        if embed_dim % 8:
            raise ValueError(f"embed_dim must be divisible by 8 for the ConvStem, got {embed_dim}")
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for stride in strides:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.stride = math.prod(strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions are faster on CPU and GPU, and make the permute free
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


def sincos_pos_embed_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding ``[1, h*w, dim]`` in the MoCo-v3 layout: the first half of
    the channels encodes the column, the second the row (sin then cos, frequencies ``1/T^(i/(dim/4))``)."""
    if dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for sin-cos position embedding, got {dim}")
    h, w = grid
    gw, gh = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w = gw.flatten()[:, None] * omega[None]
    out_h = gh.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]

