"""Segmentation metrics for hierarchical part/object discovery (per image; averaged by the caller).

Conventions: label maps are integer ``[H, W]`` arrays; ground truth uses 0 for background. mIoU
of one image is the mean IoU over the classes present in the ground truth or the prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from cast.hierarchy import boundaries

__all__ = ["miou", "oracle_labels", "consistency", "boundary_f", "boundary_recall", "boundaries", "purity"]


def miou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean IoU over the classes present in ``gt`` or ``pred`` (one image)."""
    classes = np.union1d(np.unique(gt), np.unique(pred))
    ious = []
    for c in classes:
        p, g = pred == c, gt == c
        union = np.logical_or(p, g).sum()
        if union:
            ious.append(np.logical_and(p, g).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def oracle_labels(segments: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Give every segment the ground-truth label covering most of its pixels (protocol (i))."""
    seg = segments.ravel().astype(np.int64)
    lab = gt.ravel().astype(np.int64)
    n_seg, n_lab = int(seg.max()) + 1, int(lab.max()) + 1
    counts = np.bincount(seg * n_lab + lab, minlength=n_seg * n_lab).reshape(n_seg, n_lab)
    return counts.argmax(1)[segments]


def consistency(segments: np.ndarray, object_mask: np.ndarray, threshold: float = 0.95) -> float:
    """Share of segments lying at least ``threshold`` inside the object or inside the background."""
    seg = segments.ravel().astype(np.int64)
    obj = (object_mask.ravel() > 0).astype(np.int64)
    n = int(seg.max()) + 1
    area = np.bincount(seg, minlength=n)
    inside = np.bincount(seg, weights=obj, minlength=n)
    present = area > 0
    frac = inside[present] / area[present]
    return float(np.mean(np.maximum(frac, 1 - frac) >= threshold))


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: int = 2) -> float:
    """Boundary F-score: a predicted boundary pixel counts if a ground-truth boundary lies within
    ``tolerance`` pixels (and vice versa for recall)."""
    pb, gb = boundaries(pred), boundaries(gt)
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    disk = np.hypot(*np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]) <= tolerance
    near_g = ndimage.binary_dilation(gb, structure=disk)
    near_p = ndimage.binary_dilation(pb, structure=disk)
    precision = (pb & near_g).sum() / pb.sum()
    recall = (gb & near_p).sum() / gb.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def boundary_recall(pred: np.ndarray, gt: np.ndarray, tolerance: int = 2) -> float:
    """Share of ground-truth boundary pixels with a predicted boundary within ``tolerance`` pixels."""
    pb, gb = boundaries(pred), boundaries(gt)
    if not gb.any():
        return 1.0
    disk = np.hypot(*np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]) <= tolerance
    return float((gb & ndimage.binary_dilation(pb, structure=disk)).sum() / gb.sum())


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of items whose cluster's majority label is their own label."""
    if clusters.numel() == 0:
        return 0.0
    correct = sum(int(torch.bincount(labels[clusters == c]).max()) for c in clusters.unique())
    return correct / clusters.numel()
