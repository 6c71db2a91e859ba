"""The ViT baseline of the CAST paper as a segmenter: patch tokens upsampled to pixels, then
hierarchical spherical k-means (:mod:`cast.clustering`) with as many segments per level as CAST
(64, 32, 16, 8; each level clusters the previous level's centroids).

Works with any timm-style ViT whose ``forward_features`` returns ``[B, prefix + N, C]`` tokens,
including MoCo-v3's conv-stem ViTs (:class:`cast.models.ConvStemViT`, re-exported here).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .clustering import hierarchical_kmeans
from .hierarchy import Readout
from .models.vit_conv import VIT_VARIANTS, ConvStemViT
from .refine import RefineSettings
from .segmenter import Segmenter
from .weights import ModelInfo

__all__ = ["ViTKMeansSegmenter", "ConvStemViT", "VIT_VARIANTS"]


class ViTKMeansSegmenter(Segmenter):
    """Segment an image into a 4-level hierarchy with a ViT and hierarchical spherical k-means.

    The last block's patch tokens (after ``norm``) are upsampled bilinearly to ``upsample`` x the
    token grid, clustered per pixel into ``num_clusters[0]`` segments, and the centroids clustered
    again level by level. The level-1 clusters play the role of CAST's superpixels in the tree.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, num_clusters: tuple[int, ...] = (64, 32, 16, 8),
                 upsample: int = 4, seed: int = 0, top_k: int = 5, refine: RefineSettings | bool = True) -> None:
        super().__init__(model, info, top_k, refine)
        self.num_clusters = tuple(num_clusters)
        self.upsample = upsample
        self.seed = seed

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``[B, num_classes]`` of ``[B, S, S, 3]`` uint8 images."""
        probs, _ = self.classify_embed(images)
        if probs is None:
            raise ValueError("this model has no classification head")
        return probs

    @torch.inference_mode()
    def pixel_features(self, image: np.ndarray) -> torch.Tensor:
        """``[h, w, C]`` patch-token features upsampled to ``upsample`` x the token grid."""
        tokens = self.model.forward_features(self.normalise(image[None]))
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        tokens = tokens[0, prefix:].float()
        g = int(round(math.sqrt(tokens.shape[0])))
        grid = tokens.t().reshape(1, -1, g, g)
        up = F.interpolate(grid, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return up[0].permute(1, 2, 0)

    def read(self, work: np.ndarray) -> Readout:
        t0 = time.perf_counter()
        s = self.input_size
        feats = self.pixel_features(work).cpu()  # k-means runs on the CPU (seeded, deterministic)
        h, w, c = feats.shape
        labels = hierarchical_kmeans(feats.reshape(-1, c), self.num_clusters, seed=self.seed)
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
        readout = Readout(level1, token_labels, tuple([k1] + [int(t.max()) + 1 for t in token_labels[1:]]))
        if self.has_head:
            probs = self.classify(work[None])[0]
            readout.level_probs = [probs] * 4
        readout.timings = {"features_kmeans": time.perf_counter() - t0}
        return readout

    def describe(self) -> dict:
        return {**self.info.to_dict(), "segmenter": "vit+hierarchical spherical k-means"}
