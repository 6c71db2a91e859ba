"""Label maps at the photo's own resolution whose boundaries follow the photo.

The model decides the segments' shapes at its working size (160 or 224 px); carried to the photo
by nearest-neighbour lookup their boundaries are stair steps as wide as one working pixel
(4-30 px on a photo). :func:`refine_labels` keeps every segment where the working map is sure of
it and re-decides only the **boundary band**: the photo's pixels that fall on working pixels
within ``ring`` pixels of a boundary. Each of those pixels takes, among the segments present in a
``(2 window + 1)``-pixel working neighbourhood around it, the one whose mean colour (CIE Lab,
measured on the working image away from boundaries) is nearest to its own (lightly smoothed)
colour; a 3 x 3 median then removes isolated pixels. The band is narrow, so segments keep their
shape and no segment can jump far; a pixel never takes a segment that is not next to it. The
method and the alternatives it was measured against are in ``benchmarks/refinement_study.py``.

Cost grows with the pixels refined; photos above ``max_pixels`` are refined at a reduced size
(JPEGs are decoded directly at it) and carried to the full size by nearest lookup, so the
boundaries are exact to that size (:attr:`RefineSettings.max_pixels`, 6 MP by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["RefineSettings", "refine_labels", "axis_map", "band_of", "refinement_size"]


@dataclass(frozen=True)
class RefineSettings:
    """How label maps are carried to the photo's resolution."""

    enabled: bool = True  # False: nearest-neighbour lookup only (the maps of earlier versions)
    ring: int = 2  # working pixels on each side of a boundary whose photo pixels are re-decided
    window: int = 2  # candidate segments come from this many working pixels around a photo pixel
    candidates: int = 4  # at most this many distinct segments are compared per photo pixel
    blur: float = 1.0  # Gaussian sigma (photo pixels) applied to the photo's colours first; 0: none
    clean: int = 3  # median filter size on the band (0: none); removes single-pixel specks
    max_pixels: int = 6_000_000  # refine at most this many pixels; larger photos at a reduced size (24 MP JPEG: half)

    def to_dict(self) -> dict:
        return asdict(self)


def axis_map(original: int, working: int) -> np.ndarray:
    """Working index of each original row (or column): nearest, ``floor(i * working / original)``."""
    return (np.arange(original, dtype=np.int64) * working) // original


def refinement_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """``(w, h)`` at which a photo of ``size`` is refined: itself, or scaled down to ``max_pixels``."""
    w, h = size
    if w * h <= max_pixels:
        return w, h
    scale = (max_pixels / (w * h)) ** 0.5
    return max(1, int(w * scale)), max(1, int(h * scale))


def band_of(labels: np.ndarray, ring: int) -> np.ndarray:
    """``[h, w]`` bool: working pixels within ``ring`` pixels (chessboard) of a label boundary."""
    edge = np.zeros(labels.shape, bool)
    dx = labels[:, :-1] != labels[:, 1:]
    dy = labels[:-1] != labels[1:]
    edge[:, :-1] |= dx
    edge[:, 1:] |= dx
    edge[:-1] |= dy
    edge[1:] |= dy
    if ring > 1:
        edge = ndimage.binary_dilation(edge, structure=np.ones((3, 3), bool), iterations=ring - 1)
    return edge


def _candidates(labels: np.ndarray, window: int, k: int) -> np.ndarray:
    """``[k, h, w]``: the distinct labels in each working pixel's window, nearest first (-1 = none)."""
    h, w = labels.shape
    pad = np.pad(labels, window, mode="edge")
    offsets = sorted(((dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)),
                     key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    out = np.full((k, h, w), -1, labels.dtype)
    count = np.zeros((h, w), np.int8)
    for dy, dx in offsets:
        shifted = pad[window + dy: window + dy + h, window + dx: window + dx + w]
        new = count < k
        for j in range(k):
            new &= out[j] != shifted
        if not new.any():
            continue
        rr, cc = np.nonzero(new)
        out[count[rr, cc], rr, cc] = shifted[rr, cc]
        count[rr, cc] += 1
    return out


def _segment_colours(labels: np.ndarray, working_image: np.ndarray, band: np.ndarray, n: int) -> np.ndarray:
    """``[n, 3]`` mean Lab colour of each label, from its working pixels off the band (all of
    them for a label that lies entirely on it)."""
    lab = cv2.cvtColor(working_image, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float64)
    flat = labels.ravel()
    inner = ~band.ravel()

    def means(select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = flat[select]
        count = np.bincount(idx, minlength=n)
        sums = np.stack([np.bincount(idx, weights=lab[select, c], minlength=n) for c in range(3)], 1)
        return sums / np.maximum(count, 1)[:, None], count

    colours, count = means(inner)
    if (count == 0).any():
        everywhere, _ = means(np.ones(flat.shape, bool))
        colours[count == 0] = everywhere[count == 0]
    return colours.astype(np.float32)


def refine_labels(image: np.ndarray, labels: np.ndarray, working_image: np.ndarray,
                  settings: RefineSettings = RefineSettings()) -> np.ndarray:
    """Carry a working-size label map to ``image``'s size with boundaries that follow ``image``.

    Args:
        image: ``[H, W, 3]`` uint8 photo at the size to produce (>= the working size).
        labels: ``[h, w]`` int labels ``>= 0`` at the working size.
        working_image: ``[h, w, 3]`` uint8, the photo as the model saw it (segment colours).
        settings: band width, neighbourhood, smoothing (see :class:`RefineSettings`).

    Returns:
        ``[H, W]`` labels of ``labels``' dtype; pixels off the band equal the nearest-neighbour map.
    """
    H, W = image.shape[:2]
    h, w = labels.shape
    rows, cols = axis_map(H, h), axis_map(W, w)
    out = labels[rows][:, cols]
    if not settings.enabled or (H <= h and W <= w) or labels.max() == labels.min():
        return out
    n = int(labels.max()) + 1
    band_w = band_of(labels, settings.ring)
    colours = np.ascontiguousarray(_segment_colours(labels, working_image, band_w, n).T)  # [3, n]
    cand = _candidates(labels, settings.window, settings.candidates).reshape(settings.candidates, -1)
    band_cols = band_w[:, cols]  # [h, W]: which photo columns of each working row are on the band
    step = max(1, 1_000_000 // W)  # photo rows per strip: the temporaries stay small and are reused
    pad = int(np.ceil(3 * settings.blur))
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        band = band_cols[rows[r0:r1]]  # [r1 - r0, W]
        if not band.any():
            continue
        _assign_strip(image, out, band, r0, r1, rows, cols, w, cand, colours, settings, pad)
    if settings.clean and n <= 256:
        _clean(out, band_cols, rows, settings.clean)
    return out


def _assign_strip(image: np.ndarray, out: np.ndarray, band: np.ndarray, r0: int, r1: int, rows: np.ndarray,
                  cols: np.ndarray, w: int, cand: np.ndarray, colours: np.ndarray, settings: RefineSettings,
                  pad: int) -> None:
    """Decide the band pixels of photo rows ``r0:r1`` (in place in ``out``)."""
    H = image.shape[0]
    ys, xs = np.nonzero(band)
    y0 = max(r0 - pad, 0)
    crop = image[y0:min(r1 + pad, H)]
    if settings.blur > 0:
        crop = cv2.GaussianBlur(crop, (0, 0), settings.blur)
    lab = cv2.cvtColor(np.ascontiguousarray(crop[r0 - y0: r0 - y0 + (r1 - r0)]), cv2.COLOR_RGB2Lab)
    pix = lab[ys, xs].astype(np.float32)  # [N, 3] Lab, lightly smoothed
    cell = rows[ys + r0] * w + cols[xs]  # the working pixel of each band pixel
    best = np.full(ys.size, np.inf, np.float32)
    choice = out[ys + r0, xs]
    for j in range(cand.shape[0]):
        c = cand[j][cell]
        ci = np.maximum(c, 0)
        cost = np.zeros(ys.size, np.float32)
        for ch in range(3):
            diff = pix[:, ch] - colours[ch][ci]
            cost += diff * diff
        better = (c >= 0) & (cost < best)
        best[better] = cost[better]
        choice[better] = c[better]
    out[ys + r0, xs] = choice


def _clean(out: np.ndarray, band_cols: np.ndarray, rows: np.ndarray, size: int) -> None:
    """Median filter on the band, strip by strip (single-pixel specks take a neighbour's label)."""
    H = out.shape[0]
    step = max(1, 2_000_000 // out.shape[1])
    half = size // 2
    for r0 in range(0, H, step):
        r1 = min(H, r0 + step)
        y0, y1 = max(r0 - half, 0), min(r1 + half, H)
        smooth = cv2.medianBlur(np.ascontiguousarray(out[y0:y1]).astype(np.uint8), size)[r0 - y0: r0 - y0 + (r1 - r0)]
        band = band_cols[rows[r0:r1]]
        out[r0:r1][band] = smooth[band]
