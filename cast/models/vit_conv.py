"""MoCo-v3's ViT with a convolutional stem: the ViT baseline of the CAST paper.

A stem of four 3x3 stride-2 convolutions (stride 16 overall, a 14x14 grid at 224 px), fixed 2-D
sine-cosine positions with a zero [CLS] slot, standard timm blocks. Keys: ``patch_embed.proj.*``,
``cls_token``, ``pos_embed`` ``[1, 1 + N, C]``, ``blocks.{i}``, ``norm``, ``head`` (with classes).
Registered with timm as ``vit_conv_small`` and ``vit_conv_base``; segmented by hierarchical k-means
of its patch tokens (:class:`cast.baselines.ViTKMeansSegmenter`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from ..superpixels import SEEDS_MOCO
from ..weights import IMAGENET_MEAN, IMAGENET_STD, PUBLISHED, ModelInfo, PublishedWeights, default_class_names
from .builder import build
from .convert import adapt_for_timm, check_fits, unwrap_training_file
from .hub_mixin import OwnFormatMixin
from .layers import ConvStem, layer_norm, sincos_pos_embed_2d

__all__ = ["ConvStemViT", "VIT_VARIANTS", "checkpoint_filter_fn"]


class ConvStemViT(nn.Module, OwnFormatMixin, library_name="cast-explorer", tags=["image-classification", "vit"]):
    """ViT with a stride-16 convolutional stem; input ``[B, 3, H, W]`` normalised with ImageNet mean/std."""

    def __init__(self, img_size: int | tuple[int, int] = 224, embed_dim: int = 384, depth: int = 11, num_heads: int = 12,
                 num_classes: int = 0, mlp_ratio: float = 4.0, in_chans: int = 3, global_pool: str = "token") -> None:
        super().__init__()
        if global_pool != "token":
            raise ValueError(f"this ViT pools its [CLS] token only (forward_features gives every token), got {global_pool!r}")
        if isinstance(img_size, (tuple, list)):
            img_size = int(img_size[0])
        self.model_args = dict(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                               num_classes=num_classes, mlp_ratio=mlp_ratio, in_chans=in_chans)
        self.img_size, self.in_chans = img_size, in_chans
        self.grad_checkpointing = False
        self.patch_embed = ConvStem(in_chans, embed_dim, strides=(2, 2, 2, 2))
        self.grid = img_size // 16
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d((self.grid, self.grid), embed_dim)
        self.register_buffer("pos_embed", torch.cat([torch.zeros(1, 1, embed_dim), pos], 1))  # fixed, in the files
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=layer_norm)
                                      for _ in range(depth)])
        self.norm = layer_norm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=16, module=f"blocks.{i}") for i in range(depth)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (the sin-cos positions are a buffer)."""
        return {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay: the stem, one group per block, the norm."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none), where the model lives, in its dtype and mode."""
        if global_pool not in (None, "token"):
            raise ValueError(f"this ViT pools its [CLS] token only, got global_pool={global_pool!r}")
        self.num_classes = self.model_args["num_classes"] = num_classes
        like = self.cls_token
        self.head = nn.Linear(self.embed_dim, num_classes, device=like.device, dtype=like.dtype) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 1 + N, C]``: [CLS] and patch tokens after the blocks and ``norm``."""
        x = self._embed(x)
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing else self.blocks(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> Any:
        """Block outputs (timm's contract): ``[B, C, h, w]`` patch maps (``"NCHW"``) or ``[B, N, C]`` tokens."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, H, W = x.shape
        x = self._embed(x)
        out = []
        blocks = self.blocks[: max_index + 1] if stop_early or intermediates_only else self.blocks
        for i, blk in enumerate(blocks):
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing else blk(x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, 1:]
                out.append(y if output_fmt == "NLC" else y.reshape(B, H // 16, W // 16, -1).permute(0, 3, 1, 2).contiguous())
        return out if intermediates_only else (self.norm(x), out)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``[B, 1 + N, C]`` -> logits ``[B, num_classes]`` (or the [CLS] feature)."""
        return x[:, 0] if pre_logits else self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def default_info(self) -> ModelInfo:
        arch = getattr(self, "pretrained_cfg", {}).get("architecture") or "vit_conv_small"
        return ModelInfo(name=arch, family="mocov3", superpixels=SEEDS_MOCO, input_size=self.img_size,
                         class_names=default_class_names(self.num_classes))


def checkpoint_filter_fn(obj: Any, model: ConvStemViT | None = None) -> dict[str, torch.Tensor]:
    """A published MoCo-v3 ViT file (or bare state dict) -> our state dict, checked against ``model``."""
    sd = unwrap_training_file(obj)
    if model is not None:
        sd = adapt_for_timm(sd, model)
        lenient = ("head.weight", "head.bias") + (("patch_embed.proj.0.weight",) if model.in_chans != 3 else ())
        check_fits(sd, model, lenient)
    return sd


VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_conv_small": dict(embed_dim=384, depth=11, num_heads=12),
    "vit_conv_base": dict(embed_dim=768, depth=11, num_heads=12),
}


def _cfg(weights: PublishedWeights) -> dict[str, Any]:
    return dict(
        hf_hub_id=weights.hub_repo, hf_hub_filename=weights.hub_file, num_classes=weights.num_classes,
        input_size=(3, 224, 224), fixed_input_size=True, crop_pct=1.0, crop_mode="squash", interpolation="bilinear",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="patch_embed.proj.0", classifier="head", license="mit",
        paper_ids=["arXiv:2210.00314", "arXiv:2104.02057"], origin_url="https://github.com/facebookresearch/moco-v3",
    )


default_cfgs = generate_default_cfgs({w.name: _cfg(w) for w in PUBLISHED.values() if w.arch in VIT_VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a variant through timm (:func:`.builder.build`); ``features_only=True`` gives the last
    three blocks' outputs by default, as timm's ViTs do."""
    model = build(ConvStemViT, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=3, traceable=True,
                  **{**VIT_VARIANTS[variant], **kwargs})
    if pretrained:
        model.info = next(w for w in PUBLISHED.values() if w.arch == variant).info()
    return model


@register_model
def vit_conv_small(pretrained: bool = False, **kwargs: Any) -> ConvStemViT:
    """MoCo-v3 ViT-S with a conv stem (the paper's ViT-S baseline)."""
    return _create("vit_conv_small", pretrained, **kwargs)


@register_model
def vit_conv_base(pretrained: bool = False, **kwargs: Any) -> ConvStemViT:
    """MoCo-v3 ViT-B with a conv stem (the paper's ViT-B baseline)."""
    return _create("vit_conv_base", pretrained, **kwargs)
