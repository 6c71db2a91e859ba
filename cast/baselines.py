"""The ViT baseline of the CAST paper: patch tokens upsampled to pixels, then hierarchical spherical
k-means with as many segments per level as CAST (64, 32, 16, 8; each level clusters the previous
level's centroids). Works with any timm-style ViT whose ``forward_features`` returns
``[B, prefix + N, C]`` tokens, including MoCo-v3's conv-stem ViTs (:class:`ConvStemViT`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer import Block

from .hierarchy import Hierarchy, build_hierarchy
from .image import ImageLike, read_image
from .models.cast import _layer_norm, sincos_pos_embed_2d
from .weights import ModelInfo

__all__ = ["ConvStemViT", "spherical_kmeans", "kmeans_tree", "hierarchical_kmeans", "ViTKMeansSegmenter", "VIT_VARIANTS"]


class ConvStemViT(nn.Module):
    """MoCo-v3's ViT with a convolutional stem (stride 16) and fixed 2-D sin-cos positions.

    Keys: ``patch_embed.proj.{0,1,3,4,6,7,9,10,12}``, ``cls_token``, ``pos_embed`` ``[1, 1 + N, C]``
    (slot 0 zero), ``blocks.{i}``, ``norm``, ``head`` (when ``num_classes > 0``).
    """

    def __init__(self, img_size: int = 224, embed_dim: int = 384, depth: int = 11, num_heads: int = 12,
                 num_classes: int = 0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.model_args = dict(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                               num_classes=num_classes, mlp_ratio=mlp_ratio)
        layers: list[nn.Module] = []
        c_in, c_out = 3, embed_dim // 8
        for _ in range(4):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, 1))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Sequential(*layers)
        self.grid = img_size // 16
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d((self.grid, self.grid), embed_dim)
        self.pos_embed = nn.Parameter(torch.cat([torch.zeros(1, 1, embed_dim), pos], 1), requires_grad=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_layer_norm)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_conv_small": dict(embed_dim=384, depth=11, num_heads=12),
    "vit_conv_base": dict(embed_dim=768, depth=11, num_heads=12),
}


def _kmeanspp(x: torch.Tensor, w: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on the unit sphere (distance = 1 - cosine), weighted by ``w``."""
    first = int(torch.multinomial(w, 1, generator=g))
    centres = [x[first]]
    d = (1 - x @ centres[0]).clamp(min=0)
    for _ in range(1, k):
        p = d * w
        idx = int(torch.multinomial(p, 1, generator=g)) if float(p.sum()) > 0 else int(torch.argmax(w))
        centres.append(x[idx])
        d = torch.minimum(d, (1 - x @ x[idx]).clamp(min=0))
    return torch.stack(centres)


def spherical_kmeans(x: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 25,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster L2-normalised rows of ``x`` ``[P, C]`` into ``k`` groups by cosine similarity.

    Returns ``(assignment [P] long, centroids [k, C] unit-norm)``; with ``weights`` each row counts
    that many times. Deterministic for a given ``seed``.
    """
    x = F.normalize(x.double(), dim=1)
    w = torch.ones(x.shape[0], dtype=x.dtype) if weights is None else weights.double()
    k = min(k, x.shape[0])
    g = torch.Generator().manual_seed(seed)
    c = _kmeanspp(x, w, k, g)
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        new = (x @ c.t()).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, new, x * w[:, None])
        empty = sums.norm(dim=1) == 0
        c = torch.where(empty[:, None], c, F.normalize(sums, dim=1))
        if torch.equal(new, assign):
            break
        assign = new
    return (x @ c.t()).argmax(1), c.float()


def kmeans_tree(x: torch.Tensor, num_clusters: list[int] | tuple[int, ...], seed: int = 0
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Hierarchical spherical k-means: level 1 clusters the rows of ``x`` ``[N, C]``; level l
    clusters level l-1's centroids, weighted by their sizes, so the clusters form a tree.

    Returns ``(centroids, parents, labels)``: per level ``[K_l, C]`` unit centroids and ``[K_l]``
    parent ids at level l+1 (zeros at the top), and ``[N, L]`` the cluster of every row at every
    level. A level asked for more clusters than it has points repeats its first centroid.
    """
    x = F.normalize(x.double(), dim=1)
    assign, centres = spherical_kmeans(x, num_clusters[0], seed=seed)
    centroids, parents, labels = [centres], [], [assign]
    sizes = torch.bincount(assign, minlength=centres.shape[0]).double()
    for k in num_clusters[1:]:
        sub, new = spherical_kmeans(centroids[-1], k, weights=sizes.clamp(min=1e-6), seed=seed)
        parents.append(sub)
        labels.append(sub[labels[-1]])
        sizes = torch.zeros(new.shape[0], dtype=torch.double).index_add_(0, sub, sizes)
        centroids.append(new)
    parents.append(torch.zeros(centroids[-1].shape[0], dtype=torch.long))
    for lv, k in enumerate(num_clusters):
        if centroids[lv].shape[0] < k:
            extra = k - centroids[lv].shape[0]
            centroids[lv] = torch.cat([centroids[lv], centroids[lv][:1].repeat(extra, 1)])
            parents[lv] = torch.cat([parents[lv], parents[lv][:1].repeat(extra)])
    return [c.float() for c in centroids], parents, torch.stack(labels, 1)


def hierarchical_kmeans(x: torch.Tensor, num_clusters: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """Per level, the cluster of each row of ``x`` (see :func:`kmeans_tree`; levels nest)."""
    return list(kmeans_tree(x, num_clusters, seed=seed)[2].unbind(1))


class ViTKMeansSegmenter:
    """Segment an image into a 4-level hierarchy with a ViT and hierarchical spherical k-means.

    The last block's patch tokens (after ``norm``) are upsampled bilinearly to the working
    resolution (``upsample`` x the token grid), clustered per pixel into ``num_clusters[0]``
    segments, and the centroids clustered again level by level.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, num_clusters: tuple[int, ...] = (64, 32, 16, 8),
                 upsample: int = 4, seed: int = 0) -> None:
        self.model = model.eval()
        self.info = info
        self.num_clusters = tuple(num_clusters)
        self.upsample = upsample
        self.seed = seed
        self.input_size = info.input_size
        self.device = next(model.parameters()).device
        self._mean = torch.tensor(info.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std).view(1, 3, 1, 1)
        self.has_head = getattr(model, "num_classes", 0) > 0 and info.class_names is not None

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0
        return ((x - self._mean) / self._std).to(self.device)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``[B, num_classes]`` of ``[B, S, S, 3]`` uint8 images."""
        with torch.inference_mode():
            return self.model(self.normalise(images)).float().softmax(-1).cpu().numpy()

    def pixel_features(self, image: np.ndarray) -> torch.Tensor:
        """``[h, w, C]`` patch-token features upsampled to ``upsample`` x the token grid."""
        with torch.inference_mode():
            tokens = self.model.forward_features(self.normalise(image[None]))
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        tokens = tokens[0, prefix:].float()
        g = int(round(math.sqrt(tokens.shape[0])))
        grid = tokens.t().reshape(1, -1, g, g)
        up = F.interpolate(grid, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return up[0].permute(1, 2, 0)

    def __call__(self, image: ImageLike) -> Hierarchy:
        t0 = time.perf_counter()
        src = read_image(image, draft_to=2 * self.input_size)
        s = self.input_size
        work = src.rgb if src.rgb.shape[:2] == (s, s) else np.asarray(
            Image.fromarray(src.rgb).resize((s, s), Image.Resampling.BILINEAR, reducing_gap=None))
        t1 = time.perf_counter()
        feats = self.pixel_features(work)
        h, w, c = feats.shape
        labels = hierarchical_kmeans(feats.reshape(-1, c), self.num_clusters, seed=self.seed)
        t2 = time.perf_counter()
        # level-1 clusters play the role of CAST's superpixels: map them to the working size
        level1 = labels[0].reshape(h, w)[None, None].float()
        level1 = F.interpolate(level1, size=(s, s), mode="nearest")[0, 0].long().numpy()
        k1 = int(labels[0].max()) + 1
        # cluster of each level-1 cluster at every level (constant within a level-1 cluster)
        token_labels = [np.arange(k1)]
        flat1 = labels[0].numpy()
        for lv in labels[1:]:
            m = np.zeros(k1, np.int64)
            m[flat1] = lv.numpy()
            token_labels.append(m)
        probs = self.classify(work[None])[0] if self.has_head else None
        tree = build_hierarchy(
            level1, token_labels, src.size, work, [k1] + [int(t.max()) + 1 for t in token_labels[1:]],
            level_probs=[probs] * 4 if probs is not None else None,
            class_names=self.info.class_names if self.has_head else None,
        )
        tree.image_name = src.name
        tree.image_notes = src.notes
        tree.model = {**self.info.to_dict(), "segmenter": "vit+hierarchical spherical k-means"}
        tree.timings = {"read": t1 - t0, "features_kmeans": t2 - t1, "total": time.perf_counter() - t0}
        return tree
