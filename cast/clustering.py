"""Spherical k-means and its hierarchical form (a tree of clusters).

Used by the ViT baseline of the CAST paper (patch tokens clustered into 64 → 32 → 16 → 8 segments,
:mod:`cast.baselines`) and by HIRL training (image embeddings clustered into a prototype tree,
``train/hirl.py``). Pure PyTorch, float64, deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["spherical_kmeans", "kmeans_tree", "hierarchical_kmeans"]


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


def kmeans_tree(x: torch.Tensor, num_clusters: Sequence[int], seed: int = 0
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


def hierarchical_kmeans(x: torch.Tensor, num_clusters: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """Per level, the cluster of each row of ``x`` (see :func:`kmeans_tree`; levels nest)."""
    return list(kmeans_tree(x, num_clusters, seed=seed)[2].unbind(1))
