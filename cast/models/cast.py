"""CAST: a Vision Transformer on superpixel tokens with graph pooling between stages.

Ke, Mo, Yu, "Learning Hierarchical Image Segmentation For Recognition and By Recognition",
ICLR 2024. Layout of this file (timm style): building blocks, the model, checkpoint
conversion, the registered size variants.

State-dict keys and shapes equal those of the published checkpoints (the layouts are listed in
``tests/data/official_state_dict_keys.json``), so the published weights load with ``strict=True``
after :func:`checkpoint_filter_fn`. The architecture facts the code relies on are collected in
``docs/architecture.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block

from ..ops import farthest_point_sample, segment_mean
from ..superpixels import SEEDS_DEIT, SEEDS_MOCO
from ..weights import IMAGENET_MEAN, IMAGENET_STD, PUBLISHED, ModelInfo, PublishedWeights, default_class_names
from .builder import build
from .convert import adapt_for_timm, check_fits, unwrap_training_file
from .hub_mixin import OwnFormatMixin
from .layers import ConvStem, layer_norm, sincos_pos_embed_2d

__all__ = ["CAST", "CastOutput", "GraphPooling", "checkpoint_filter_fn", "infer_model_args", "variant_of", "VARIANTS"]

POOL_HEADS = 12  # the published graph pooling attention always has 12 heads
ASSIGN_SCALE = 5.0  # cosine similarity -> assignment logits


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class CentroidBlock(nn.Module):
    """Attention-only block that produces the features used to assign tokens to centroids.

    ``x + attn(norm(x))``, then centred over the tokens and shifted by a learned ``bias``.
    """

    def __init__(self, dim: int, num_heads: int = POOL_HEADS) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.bias = nn.Parameter(torch.zeros(dim).normal_(0, 1e-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x - x.mean(dim=1, keepdim=True) + self.bias


@dataclass
class PoolResult:
    """What one graph pooling step returns (``N`` tokens in, ``K`` segments out)."""

    cls_token: torch.Tensor  # [B, 1, C]
    tokens: torch.Tensor  # [B, K, C] segment tokens
    assign_logits: torch.Tensor  # [B, N, K] before softmax
    centroid_index: torch.Tensor  # [B, K] long, FPS indices into N


class GraphPooling(nn.Module):
    """Merge ``N`` tokens into ``num_clusters`` segment tokens (the paper's graph pooling).

    Centroids are chosen by farthest point sampling on the raw token features; every token is
    softly assigned to the centroids by cosine similarity of ``centroid_fc`` features; a segment
    token is the assignment-weighted mean of ``fc1`` features, projected by ``fc2``, plus the
    centroid's own token.
    """

    def __init__(self, dim: int, num_clusters: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.centroid_fc = CentroidBlock(dim)
        self.fc1 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout))
        self.fc2 = nn.Sequential(nn.LayerNorm(dim * 4), nn.Linear(dim * 4, dim))

    def sample_centroids(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """FPS indices ``[B, K]`` into the ``N`` tokens of ``x`` ``[B, N, C]``.

        Padded tokens are replaced by the mean of the valid tokens, which is also prepended as
        the start point; the start point is dropped from the result.
        """
        B, N, C = x.shape
        valid = torch.ones(B, N, dtype=x.dtype, device=x.device) if padding is None else (~padding).to(x.dtype)
        mean = (x * valid.unsqueeze(-1)).sum(1) / valid.sum(1).clamp(min=1).unsqueeze(-1)  # [B, C]
        filled = torch.where(valid.unsqueeze(-1) > 0, x, mean.unsqueeze(1))
        cloud = torch.cat([mean.unsqueeze(1), filled], dim=1)
        index = farthest_point_sample(cloud, self.num_clusters + 1)[:, 1:] - 1
        # Only when fewer distinct tokens than clusters exist does the sampler return the start
        # point again; reuse the first centroid then (it will own no members).
        return torch.where(index < 0, index[:, :1].clamp(min=0), index)

    def forward(self, cls_token: torch.Tensor, x: torch.Tensor, padding: torch.Tensor | None = None) -> PoolResult:
        """``cls_token`` ``[B, 1, C]``, ``x`` ``[B, N, C]``, ``padding`` bool ``[B, N]`` (True = padded)."""
        B, N, C = x.shape
        index = self.sample_centroids(x, padding)
        gather_index = index.unsqueeze(-1).expand(-1, -1, C)

        node = self.centroid_fc(x)
        centroid = torch.gather(node, 1, gather_index)
        logits = ASSIGN_SCALE * torch.einsum(
            "bnc,bkc->bnk", F.normalize(node, dim=-1), F.normalize(centroid, dim=-1)
        )
        assign = logits.softmax(dim=-1)

        h = self.fc1(torch.cat([cls_token, x], dim=1))
        h_cls, h_tok = h[:, :1], h[:, 1:]
        pooled = torch.einsum("bnk,bnc->bkc", assign, h_tok) / assign.sum(1).unsqueeze(-1)
        out = self.fc2(torch.cat([h_cls, pooled], dim=1))
        tokens = out[:, 1:] + torch.gather(x, 1, gather_index)
        return PoolResult(out[:, :1] + cls_token, tokens, logits, index)


class Pooling(nn.Module):
    """Holds the graph pooling under the published key prefix ``pool{l}.pool_block``."""

    def __init__(self, pool_block: GraphPooling) -> None:
        super().__init__()
        self.pool_block = pool_block

    def forward(self, cls_token: torch.Tensor, x: torch.Tensor, padding: torch.Tensor | None = None) -> PoolResult:
        return self.pool_block(cls_token, x, padding)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


@dataclass
class CastOutput:
    """Everything one forward pass of :meth:`CAST.forward_hierarchy` yields.

    Levels are listed fine to coarse (level 1 = first pooling, ``K_1`` segments).
    """

    assign_logits: list[torch.Tensor]  # 4 x [B, N_l, K_l] before softmax (N_1 = superpixel tokens)
    centroid_index: list[torch.Tensor]  # 4 x [B, K_l] long, FPS indices into the level's N_l tokens
    segments: list[torch.Tensor]  # 4 x [B, H, W] long, centroid index of each pixel's level-l segment
    token_labels: list[torch.Tensor]  # 4 x [B, S] long, the same per superpixel token
    segment_tokens: list[torch.Tensor]  # 4 x [B, K_l, C] most processed feature of each level-l segment
    segment_features: list[torch.Tensor]  # 4 x [B, K_l, C] the same after ``norm`` (the head's input space)
    padding: torch.Tensor  # [B, S] bool, superpixel ids with no cell on the feature grid
    features: torch.Tensor  # [B, C] final [CLS] feature (after ``norm``)
    logits: torch.Tensor | None = None  # [B, num_classes]; None without a head (H-CAST: the fine head's)
    level_logits: list[torch.Tensor] | None = None  # 4 x [B, num_classes]: [CLS] after each stage -> norm -> head
    segment_logits: list[torch.Tensor] | None = None  # 4 x [B, K_l, num_classes]: each segment's own token -> head
    # Hierarchical heads (H-CAST, :mod:`.hcast`); None for a flat CAST. Taxonomy levels fine -> coarse:
    taxonomy_logits: list[torch.Tensor] | None = None  # L x [B, classes_t]: each taxonomy head on its [CLS]
    taxonomy_tree_levels: tuple[int, ...] | None = None  # L: the tree level (1..3) whose segments each head reads
    segment_taxonomy_logits: list[torch.Tensor] | None = None  # L x [B, K_l, classes_t]: that level's segments


class CAST(
    nn.Module,
    OwnFormatMixin,
    library_name="cast-explorer",
    tags=["image-classification", "image-segmentation", "cast"],
    repo_url="https://github.com/twke18/CAST",
):
    """CAST: ViT blocks over superpixel tokens, with graph pooling after each of 4 stages.

    Inputs: ``images`` ``[B, 3, H, W]`` normalised with ImageNet mean/std, and ``superpixels``
    ``[B, H, W]`` long ids ``0..S-1`` (computed on the same image before normalisation). Every
    forward takes an optional ``num_superpixels`` (``S``, a Python int): passing it avoids reading
    ``superpixels.max()`` back from the device, which compiled graphs cannot do without a break.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 8,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depths: Sequence[int] = (3, 3, 3, 2),
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_clusters: Sequence[int] = (64, 32, 16, 8),
        pos_embed: Literal["sincos", "learned"] = "sincos",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: Literal["token", "avg"] = "token",
    ) -> None:
        super().__init__()
        if isinstance(img_size, (tuple, list)):  # timm passes (H, W) from a fixed-size pretrained cfg
            if img_size[0] != img_size[1]:
                raise ValueError(f"CAST takes square inputs, got img_size={tuple(img_size)}")
            img_size = int(img_size[0])
        _check_args(patch_size, depths, num_clusters, embed_dim, pos_embed, global_pool)
        # Everything needed to rebuild this model; saved with checkpoints and exports.
        self.model_args: dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depths=list(depths), num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, num_clusters=list(num_clusters), pos_embed=pos_embed,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, global_pool=global_pool,
        )
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.depths, self.num_clusters = tuple(depths), tuple(num_clusters)
        self.pos_embed_type, self.global_pool = pos_embed, global_pool
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.grad_checkpointing = False
        self.num_stages = 4  # fewer after prune_intermediate_layers
        num_cells = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = ConvStem(in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed == "sincos":  # MoCo-v3 family: fixed, stored in the files, never trained
            self.register_buffer("pos_embed", sincos_pos_embed_2d(self.grid_size, embed_dim))
            self.register_buffer("pe_token", torch.zeros(1, 1, embed_dim))
        else:  # DeiT family: learned, slot 0 belongs to [CLS]
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_cells, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # stochastic depth ramp
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i], norm_layer=layer_norm)
            for i in range(n_blocks)
        ])
        # Stage views share the modules of ``blocks``; slicing keeps the global indices, which is
        # how the published files name them (``blocks2.3`` is ``blocks.3``).
        ends = list(itertools.accumulate(depths))
        starts = [0] + ends[:-1]
        self.blocks1, self.blocks2, self.blocks3, self.blocks4 = (self.blocks[s:e] for s, e in zip(starts, ends))
        self.pool1, self.pool2, self.pool3, self.pool4 = (Pooling(GraphPooling(embed_dim, k)) for k in num_clusters)
        self.norm = layer_norm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks{i + 1}") for i in range(4)]
        self._init_weights()
        # The last pooling only reads out level 4: its output never reaches the head, so it can
        # never learn (the published models never trained it). Its tensors are buffers, kept in
        # the state dict under the published names.
        _parameters_to_buffers(self.pool4)

    # -- init ------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        if self.pos_embed_type == "learned":
            trunc_normal_(self.pos_embed, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("qkv"):  # treat q, k, v as three separate matrices
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=1e-6)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (the sin-cos positions are buffers, never trained)."""
        return {"cls_token", "pos_embed"} if self.pos_embed_type == "learned" else {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's ``param_groups_layer_decay``):
        the embedding, then one group per block in order, each graph pooling joining the last block
        of its stage (``coarse``: one group per stage), then the final norm."""
        ends = list(itertools.accumulate(self.depths))
        if coarse:
            blocks = [(rf"^blocks\.({'|'.join(str(i) for i in range(e - d, e))})\.", (stage,))
                      for stage, (d, e) in enumerate(zip(self.depths, ends))]
            pools = [(rf"^pool{stage + 1}\.", (stage,)) for stage in range(4)]
        else:
            blocks = [(r"^blocks\.(\d+)", None)]
            pools = [(rf"^pool{stage + 1}\.", (e - 1, 99999)) for stage, e in enumerate(ends)]  # 99999: previous group
        return dict(stem=r"^cls_token|^pos_embed|^pe_token|^patch_embed", blocks=[*pools, *blocks, (r"^norm", (99999,))])

    @property
    def stages(self) -> list[tuple[nn.Sequential, Pooling | None]]:
        """The (blocks, pooling) of each stage kept by pruning; a pruned pooling is None."""
        every = [(self.blocks1, self.pool1), (self.blocks2, self.pool2), (self.blocks3, self.pool3), (self.blocks4, self.pool4)]
        return every[: self.num_stages]

    # -- timm model API --------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the blocks' activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none); ``global_pool`` "token" ([CLS]) or "avg" (mean
        of the final segment tokens)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg' for CAST, got {global_pool!r}")
            self.global_pool = self.model_args["global_pool"] = global_pool
        self.num_classes = self.model_args["num_classes"] = num_classes
        like = self.cls_token  # the new head lives where the model does, in its dtype and mode
        self.head = nn.Linear(self.embed_dim, num_classes, device=like.device, dtype=like.dtype) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only what the stage outputs ``indices`` need (timm's contract): the stages up to the
        last one asked for (the pooling after it goes too), optionally ``norm`` and the head. Returns
        the kept indices. Afterwards :meth:`forward_features` ends at that stage's output (normed
        unless ``prune_norm``) and :meth:`forward_hierarchy`, which needs every pooling, refuses."""
        take, max_index = feature_take_indices(self.num_stages, indices)
        for stage in range(max_index + 1, 4):
            setattr(self, f"blocks{stage + 1}", nn.Sequential())
        for stage in range(max_index, 4):
            setattr(self, f"pool{stage + 1}", None)
        self.blocks = self.blocks[: sum(self.depths[: max_index + 1])]
        self.num_stages = max_index + 1
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    # -- forward ---------------------------------------------------------------------------
    def embed_segments(self, images: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Average ConvStem features and position embeddings per superpixel.

        Returns ``tokens`` ``[B, S, C]``, ``cls`` ``[B, 1, C]``, ``padding`` ``[B, S]`` (True for
        ids that own no cell of the feature grid) and the grid's superpixel ids ``[B, h, w]``.
        """
        x = self.patch_embed(images)  # [B, h, w, C]
        B, h, w, C = x.shape
        if superpixels.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"superpixels {tuple(superpixels.shape)} must match the image size {tuple(images.shape[-2:])}")
        grid_labels = F.interpolate(superpixels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        if num_superpixels is not None:
            num_segments = int(num_superpixels)
        elif superpixels.is_meta:  # no values to read: as many tokens as grid cells (the most that can own one)
            num_segments = h * w
        else:
            num_segments = int(superpixels.max()) + 1
        tokens = segment_mean(x, grid_labels, num_segments)
        counts = x.new_zeros(B, num_segments).scatter_add_(1, grid_labels.reshape(B, -1), x.new_ones(B, h * w))
        padding = counts <= 0.5
        if self.pos_embed_type == "sincos":
            grid_pos, cls_pos = self.pos_embed, self.pe_token
        else:
            grid_pos, cls_pos = self.pos_embed[:, 1:], self.pos_embed[:, :1]
        if grid_pos.shape[1] != h * w:
            raise ValueError(f"model built for a {self.grid_size} grid, got {(h, w)}: resize images to {self.img_size}")
        pos = segment_mean(grid_pos.reshape(1, h, w, C).expand(B, -1, -1, -1), grid_labels, num_segments)
        tokens = self.pos_drop(tokens + pos)
        cls = self.cls_token.expand(B, -1, -1) + cls_pos
        return tokens, cls, padding, grid_labels

    def _blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(blocks, x)
        return blocks(x)

    def _run_stages(self, x: torch.Tensor, cls: torch.Tensor, padding: torch.Tensor | None, last: int | None = None,
                    pool_last: bool = False) -> Iterator[tuple[torch.Tensor, PoolResult | None]]:
        """The one stage loop, from :meth:`embed_segments`'s tokens: yields, for stages 0..``last``
        (default: the last kept one), the ``[B, 1 + N, C]`` output of the stage's blocks ([CLS] first)
        and its pooling result (None for ``last`` unless ``pool_last``)."""
        last = self.num_stages - 1 if last is None else last
        for i, (blocks, pool) in enumerate(self.stages[: last + 1]):
            y = self._blocks(blocks, torch.cat([cls, x], dim=1))
            if i == last and not pool_last:
                yield y, None
                return
            if pool is None:
                raise RuntimeError(f"stage {i + 1}'s pooling was pruned (prune_intermediate_layers)")
            r = pool(y[:, :1], y[:, 1:], padding)
            yield y, r
            cls, x, padding = r.cls_token, r.tokens, None

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor,
                         num_superpixels: int | None = None) -> torch.Tensor:
        """Run all stages; returns ``[B, 1 + K_3, C]``: [CLS] and the level-3 segment tokens after
        the last stage's blocks and ``norm`` (the published model's final token sequence). After
        :meth:`prune_intermediate_layers`, the output of the last stage kept (and ``norm``, unless pruned)."""
        x, cls, padding, _ = self.embed_segments(images, superpixels, num_superpixels)
        *_, (last, _) = self._run_stages(x, cls, padding)
        return self.norm(last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``x`` ``[B, 1 + N, C]`` (normed) -> logits ``[B, num_classes]`` (or the pooled feature)."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:].mean(1) if self.global_pool == "avg" else x[:, 0]

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor, num_superpixels: int | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]``, or the pooled feature ``[B, C]`` when ``num_classes == 0``."""
        return self.forward_head(self.forward_features(images, superpixels, num_superpixels))

    def forward_intermediates(
        self, images: torch.Tensor, superpixels: torch.Tensor, indices: int | list[int] | None = None,
        norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
        num_superpixels: int | None = None, return_assignments: bool = False,
    ) -> Any:
        """Stage outputs (timm's contract): the tokens after each stage's blocks.

        Args:
            indices: stages to return (0..3): the last n if an int, all if None.
            norm: apply ``norm`` to them. stop_early: skip the stages after the last one asked for.
            output_fmt: ``"NCHW"``: ``[B, C, h, w]`` maps on the stride-8 grid, every cell holding
                the token of the segment it belongs to at that stage; ``"NLC"``: the ``[B, N_i, C]``
                tokens themselves (N_0 = superpixels, then K_1, K_2, K_3 segments).
            return_assignments: also return, per returned stage, the ``[B, S]`` index of the token
                each superpixel belongs to at that stage (the segment assignments).

        Returns:
            ``intermediates`` if ``intermediates_only``, else ``(final, intermediates)`` with
            ``final`` = :meth:`forward_features`'s output; plus the assignments when asked.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if stop_early or intermediates_only else self.num_stages - 1
        x, cls, padding, grid = self.embed_segments(images, superpixels, num_superpixels)
        feats, assigns, final = [], [], None
        labels = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)  # [B, S] token of each superpixel
        for i, (y, r) in enumerate(self._run_stages(x, cls, padding, last)):
            if i in take:
                tokens = (self.norm(y) if norm else y)[:, 1:]
                feats.append(tokens if output_fmt == "NLC" else _to_grid(tokens, labels, grid))
                assigns.append(labels)
            final = y
            if r is not None:
                labels = torch.gather(r.assign_logits.argmax(-1), 1, labels)
        out: list[Any] = [feats] if intermediates_only else [self.norm(final), feats]
        if return_assignments:
            out.append(assigns)
        return out[0] if len(out) == 1 else tuple(out)

    def forward_hierarchy(self, images: torch.Tensor, superpixels: torch.Tensor,
                          num_superpixels: int | None = None) -> CastOutput:
        """One pass that also returns the segmentation tree and per-level and per-segment predictions
        (see :class:`CastOutput` for shapes)."""
        if self.num_stages < 4 or self.pool4 is None:
            raise RuntimeError("the hierarchy needs every stage and pooling, and this model was pruned "
                               "(prune_intermediate_layers); use forward_intermediates")
        x, cls, input_padding, _ = self.embed_segments(images, superpixels, num_superpixels)
        stage_outputs: list[torch.Tensor] = []
        stage_tokens: list[torch.Tensor] = []
        pooled: list[PoolResult] = []
        final = None
        for y, r in self._run_stages(x, cls, input_padding, pool_last=True):
            assert r is not None
            stage_outputs.append(y)
            stage_tokens.append(y[:, 1:])
            pooled.append(r)
            final = y
        assert final is not None
        features = self._pool(self.norm(final))
        assign_logits = [r.assign_logits for r in pooled]
        token_labels = compose_assignments(assign_logits)
        flat_sp = superpixels.reshape(superpixels.shape[0], -1)
        # A level-l segment is best described by its token after the next stage's blocks; level 4
        # has no next stage, so its pooled token is used.
        segment_tokens = stage_tokens[1:] + [pooled[3].tokens]
        segment_features = [self.norm(t) for t in segment_tokens]
        return CastOutput(
            assign_logits=assign_logits,
            centroid_index=[r.centroid_index for r in pooled],
            segments=[torch.gather(t, 1, flat_sp).reshape(superpixels.shape) for t in token_labels],
            token_labels=token_labels,
            segment_tokens=segment_tokens,
            segment_features=segment_features,
            padding=input_padding,
            features=features,
            **self._read_heads(features, stage_outputs, segment_tokens, segment_features),
        )

    def _read_heads(self, features: torch.Tensor, stage_outputs: list[torch.Tensor], segment_tokens: list[torch.Tensor],
                    segment_features: list[torch.Tensor]) -> dict[str, Any]:
        """The :class:`CastOutput` fields the classifier gives, from the pass's pooled feature, each stage's raw
        ``[B, 1 + N, C]`` output and each level's segment tokens (raw and normed): the one head on the final
        feature, on every stage's normed [CLS] and on every segment (H-CAST reads its heads here instead)."""
        if not isinstance(self.head, nn.Linear):
            return dict(logits=None, level_logits=None, segment_logits=None)
        return dict(logits=self.head(features), level_logits=[self.head(self.norm(y[:, 0])) for y in stage_outputs],
                    segment_logits=[self.head(f) for f in segment_features])

    def classify_embed(self, images: torch.Tensor, superpixels: torch.Tensor,
                       num_superpixels: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The image's class logits (None without a head) and its pooled final feature, in one pass."""
        feats = self.forward_head(self.forward_features(images, superpixels, num_superpixels), pre_logits=True)
        return (self.head(feats) if isinstance(self.head, nn.Linear) else None), feats

    # -- metadata --------------------------------------------------------------------------
    def _variant_name(self) -> str | None:
        return variant_of(self.model_args)

    def default_info(self) -> ModelInfo:
        """Metadata of a model that was built rather than loaded (the loaders attach ``info``)."""
        arch = getattr(self, "pretrained_cfg", {}).get("architecture") or self._variant_name() or type(self).__name__.lower()
        sincos = self.pos_embed_type == "sincos"
        return ModelInfo(
            name=arch, family="cast-explorer" if sincos else "deit", superpixels=SEEDS_MOCO if sincos else SEEDS_DEIT,
            input_size=self.img_size, class_names=default_class_names(self.num_classes),
        )


def _to_grid(tokens: torch.Tensor, labels: torch.Tensor, grid_labels: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, h, w]``: each grid cell takes the token its superpixel
    (``grid_labels`` ``[B, h, w]``) belongs to (``labels`` ``[B, S]``)."""
    cell_token = torch.gather(labels, 1, grid_labels.flatten(1))  # [B, h*w]
    grid = torch.gather(tokens, 1, cell_token.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    B, (h, w) = tokens.shape[0], grid_labels.shape[-2:]
    return grid.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()


def _check_args(patch_size: int, depths: Sequence[int], num_clusters: Sequence[int], embed_dim: int,
                pos_embed: str, global_pool: str) -> None:
    if patch_size != 8:
        raise ValueError("CAST's ConvStem has stride 8; patch_size must be 8")
    if len(depths) != 4 or len(num_clusters) != 4:
        raise ValueError("depths and num_clusters need 4 entries, one per stage")
    if embed_dim % POOL_HEADS:
        raise ValueError(f"embed_dim must be divisible by {POOL_HEADS} (graph pooling heads), got {embed_dim}")
    if pos_embed not in ("sincos", "learned"):
        raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")


def _parameters_to_buffers(module: nn.Module) -> None:
    """Turn every parameter below ``module`` into a (persistent) buffer of the same name."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                del sub._parameters[name]
                sub.register_buffer(name, p.detach())


def compose_assignments(assign_logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tree readout: per level, the centroid each input token ends up in (``[B, S]`` long).

    Level-l hard assignment = argmax of that pooling's logits; composing them from level 1 upwards
    makes the levels nest by construction.
    """
    current = assign_logits[0].argmax(-1)  # [B, S] -> level-1 centroid
    out = [current]
    for logits in assign_logits[1:]:
        current = torch.gather(logits.argmax(-1), 1, current)
        out.append(current)
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------------


def checkpoint_filter_fn(obj: Any, model: CAST | None = None) -> dict[str, torch.Tensor]:
    """Turn a published CAST file (MoCo-v3 dict, DeiT dict or bare state dict) into our state dict.

    With ``model`` given, keys and shapes are checked against it and any mismatch raises
    :class:`CheckpointMismatchError` naming the keys; the result then loads with ``strict=True``.
    Only what timm adapts itself is let through: a head for another number of classes is dropped
    (timm then gives the model a fresh head) and a first convolution for other input channels.
    """
    sd = unwrap_training_file(obj)
    if model is not None:
        sd = adapt_for_timm(sd, model)
        lenient = ("head.weight", "head.bias") + (("patch_embed.proj.0.weight",) if model.in_chans != 3 else ())
        check_fits(sd, model, lenient)
    return sd


def infer_model_args(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the architecture of a converted state dict: width, depths, heads, clusters, family."""
    embed_dim = int(sd["cls_token"].shape[-1])
    depths = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(f"blocks{stage}.")}
        depths.append(len(idx))
    if "pe_token" in sd:
        pos = "sincos"
    else:
        pos = "learned"
    grid = sd["pos_embed"].shape[1] - (1 if pos == "learned" else 0)
    side = int(round(math.sqrt(grid)))
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    return dict(embed_dim=embed_dim, depths=tuple(depths), pos_embed=pos, img_size=side * 8, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

# Size of each registered variant (the register functions below and checkpoint inference use it).
VARIANTS: dict[str, dict[str, Any]] = {
    # ours, for CPU-scale training: cast_small's layout at half width
    "cast_tiny": dict(embed_dim=192, depths=(3, 3, 3, 2), num_heads=3, num_clusters=(64, 32, 16, 8)),
    "cast_small": dict(embed_dim=384, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8)),
    "cast_small_deep": dict(embed_dim=384, depths=(6, 3, 3, 3), num_heads=12, num_clusters=(64, 32, 16, 8)),
    "cast_base": dict(embed_dim=768, depths=(3, 3, 3, 2), num_heads=12, num_clusters=(64, 32, 16, 8)),
    "cast_base_deep": dict(embed_dim=768, depths=(6, 3, 3, 3), num_heads=12, num_clusters=(64, 32, 16, 8)),
}


def variant_of(model_args: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """The registered variant (of ``variants``, default CAST's) with this width and these depths (None when
    none matches)."""
    for name, v in (VARIANTS if variants is None else variants).items():
        if v["embed_dim"] == model_args["embed_dim"] and tuple(v["depths"]) == tuple(model_args["depths"]):
            return name
    return None


def _cfg(weights: PublishedWeights | None = None, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg of a variant; with ``weights``, where its published file lives."""
    cfg: dict[str, Any] = dict(
        input_size=(3, 224, 224), fixed_input_size=True, crop_pct=1.0, crop_mode="squash", interpolation="bilinear",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, first_conv="patch_embed.proj.0", classifier="head",
        license="mit",
        paper_ids="arXiv:2210.00314", paper_name="Learning Hierarchical Image Segmentation For Recognition and By Recognition",
        origin_url="https://github.com/twke18/CAST",
    )
    if weights is not None:
        cfg.update(hf_hub_id=weights.hub_repo, hf_hub_filename=weights.hub_file, num_classes=weights.num_classes)
    return {**cfg, **kwargs}


default_cfgs = generate_default_cfgs({
    "cast_tiny": _cfg(),  # ours: no published weights (the bundled model is loaded by cast.load_model("bundled"))
    **{w.name: _cfg(w) for w in PUBLISHED.values() if w.arch in VARIANTS},
})


def _create_cast(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a variant through timm (:func:`.builder.build`); the pretrained tag picks the head and the
    position-embedding kind its weights need (the caller's kwargs win). ``features_only=True`` returns
    the stage outputs (:mod:`.features`; by default all four stages as ``[B, C, h, w]`` maps)."""
    tag = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg")).tag
    weights = PUBLISHED.get(f"{variant}.{tag}") if tag else None
    kwargs = {**VARIANTS[variant], **(weights.model_kwargs() if weights else {}), **kwargs}
    if kwargs.get("global_pool") == "":  # timm's "no pooling": CAST always pools one token
        raise ValueError("CAST has no unpooled classifier input; use global_pool 'token' or 'avg', or forward_features")
    model = build(CAST, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=(0, 1, 2, 3), traceable=False,
                  **kwargs)
    if pretrained and weights is not None:
        model.info = weights.info()
    return model


@register_model
def cast_tiny(pretrained: bool = False, **kwargs: Any) -> CAST:
    """Ours, for CPU-scale training: cast_small's layout at half width (192, 3 heads)."""
    return _create_cast("cast_tiny", pretrained, **kwargs)


@register_model
def cast_small(pretrained: bool = False, **kwargs: Any) -> CAST:
    return _create_cast("cast_small", pretrained, **kwargs)


@register_model
def cast_small_deep(pretrained: bool = False, **kwargs: Any) -> CAST:
    return _create_cast("cast_small_deep", pretrained, **kwargs)


@register_model
def cast_base(pretrained: bool = False, **kwargs: Any) -> CAST:
    return _create_cast("cast_base", pretrained, **kwargs)


@register_model
def cast_base_deep(pretrained: bool = False, **kwargs: Any) -> CAST:
    return _create_cast("cast_base_deep", pretrained, **kwargs)
