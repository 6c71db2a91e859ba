"""Superpixels for CAST: OpenCV SEEDS (the published models) and scikit-image SLIC.

Settings of the published checkpoints (``docs/architecture.md``): SEEDS on the image converted RGB->Lab,
196 superpixels, ``num_levels=1``, ``prior=2``, ``double_step=False``; MoCo-v3 models use 15
histogram bins and 20 iterations, DeiT models 5 bins and 15 iterations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SuperpixelSettings", "superpixels", "SEEDS_MOCO", "SEEDS_DEIT", "SLIC_DEFAULT"]


@dataclass(frozen=True)
class SuperpixelSettings:
    """How a model's superpixels are computed; stored with every model's metadata."""

    method: str = "seeds"  # "seeds" (OpenCV ximgproc) or "slic" (scikit-image)
    n_segments: int = 196  # requested number of superpixels
    params: dict[str, Any] = field(default_factory=dict)  # algorithm-specific, see `superpixels`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SuperpixelSettings:
        return cls(method=str(d.get("method", "seeds")), n_segments=int(d.get("n_segments", 196)),
                   params=dict(d.get("params", {})))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return superpixels(image, self.method, self.n_segments, **self.params)

    def __hash__(self) -> int:  # params is a dict; hash its items
        return hash((self.method, self.n_segments, tuple(sorted(self.params.items()))))


SEEDS_MOCO = SuperpixelSettings("seeds", 196, {"histogram_bins": 15, "num_iterations": 20})
SEEDS_DEIT = SuperpixelSettings("seeds", 196, {"histogram_bins": 5, "num_iterations": 15})
SLIC_DEFAULT = SuperpixelSettings("slic", 196, {"compactness": 10.0})

_SEEDS_DEFAULTS = {"num_levels": 1, "prior": 2, "histogram_bins": 15, "num_iterations": 20, "double_step": False}
_SLIC_DEFAULTS = {"compactness": 10.0}


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"superpixels need an HxWx3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"superpixels need a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to ``0..S-1`` keeping their order; int64."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    if uniq.size and uniq[0] == 0 and uniq[-1] == uniq.size - 1:
        return labels.astype(np.int64, copy=False)
    return inverse.reshape(labels.shape).astype(np.int64)


def _seeds(image: np.ndarray, n_segments: int, **params: Any) -> np.ndarray:
    import cv2

    p = {**_SEEDS_DEFAULTS, **params}
    unknown = set(p) - set(_SEEDS_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown SEEDS parameters: {sorted(unknown)}")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
    h, w = image.shape[:2]
    seeds = cv2.ximgproc.createSuperpixelSEEDS(
        w, h, 3, int(n_segments), int(p["num_levels"]), int(p["prior"]), int(p["histogram_bins"]), bool(p["double_step"])
    )
    seeds.iterate(lab, int(p["num_iterations"]))
    return seeds.getLabels()


def _slic(image: np.ndarray, n_segments: int, **params: Any) -> np.ndarray:
    from skimage.segmentation import slic

    p = {**_SLIC_DEFAULTS, **params}
    compactness = float(p.pop("compactness"))
    labels = slic(image, n_segments=n_segments, compactness=compactness, convert2lab=True, start_label=0, **p)
    if labels.max() + 1 < n_segments // 2:  # too few segments: retry with a stiffer grid
        labels = slic(image, n_segments=n_segments, compactness=compactness * 3, convert2lab=True, start_label=0, **p)
    return labels


def superpixels(image: np.ndarray, method: str = "seeds", n_segments: int = 196, **params: Any) -> np.ndarray:
    """Superpixel labels of an RGB image.

    Args:
        image: ``HxWx3`` uint8 RGB array.
        method: ``"seeds"`` (OpenCV SEEDS on Lab; params ``histogram_bins`` (15), ``num_iterations``
            (20), ``prior`` (2), ``num_levels`` (1), ``double_step`` (False)) or ``"slic"``
            (scikit-image SLIC with ``convert2lab=True``; param ``compactness`` (10), other SLIC
            keywords passed through; retried with compactness x3 when it returns fewer than
            ``n_segments // 2`` segments).
        n_segments: requested number of superpixels.

    Returns:
        int64 ``HxW`` labels, compact ids ``0..S-1``.
    """
    image = _check_image(image)
    if method == "seeds":
        labels = _seeds(image, n_segments, **params)
    elif method == "slic":
        labels = _slic(image, n_segments, **params)
    else:
        raise ValueError(f"unknown superpixel method {method!r}; use 'seeds' or 'slic'")
    return _compact(labels)
