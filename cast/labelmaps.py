"""A tree's label maps at the photo's resolution, held compactly and produced on request.

Every full-resolution map of a :class:`cast.Hierarchy` is a nearest-lookup enlargement of two
*detail* maps (level-1 ids and superpixel ids at the size boundaries were refined at: the photo's
own size, or at most :attr:`cast.refine.RefineSettings.max_pixels`) composed with the parent
tables. :class:`LabelMaps` keeps only those two maps (~3 bytes per detail pixel instead of ~6 per
photo pixel) and makes the full-size maps when asked, exactly as they were before.

:meth:`LabelMaps.offload` moves the detail maps to a file (``.npz``, no pickles) and frees them; the
maps are then read back for each request and not kept. Servers that hold many trees (the web app)
offload them and ask for full-size maps only while writing a download or an export.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .keys import NUM_LEVELS
from .refine import axis_map

__all__ = ["LabelMaps", "MapsUnavailableError", "weighted_counts"]


def weighted_counts(labels: np.ndarray, row_weight: np.ndarray, col_weight: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``bincount`` of a ``[h, w]`` label map where pixel ``(r, c)`` counts ``row_weight[r] *
    col_weight[c]`` (the photo pixels a detail pixel stands for), in strips of rows so no
    ``[h, w]`` weight map is made. Returns int64 counts."""
    h, w = labels.shape
    out = np.zeros(max(minlength, int(labels.max()) + 1 if labels.size else 0), np.int64)
    step = max(1, 1_000_000 // max(w, 1))
    for r0 in range(0, h, step):
        strip = labels[r0:r0 + step].astype(np.int64, copy=False)
        weight = row_weight[r0:r0 + step, None].astype(np.int64) * col_weight[None, :].astype(np.int64)
        out += np.bincount(strip.ravel(), weights=weight.ravel(), minlength=out.size).astype(np.int64)[: out.size]
    return out


class MapsUnavailableError(FileNotFoundError):
    """An offloaded tree's maps file is gone (a size-capped cache removed it)."""


class LabelMaps:
    """Full-resolution label maps of one tree, made from its detail maps on request.

    Args:
        size: (W, H) of the photo (the full-size maps' shape is ``[H, W]``).
        level1: ``[h, w]`` compact level-1 ids at the detail resolution (uint8, uint16 beyond 256).
        superpixels: ``[h, w]`` superpixel ids at the detail resolution (uint16, int32 beyond 65535).
        parents: the tree's parent tables (``parents[l][i]``: level-(l+2) id of level-(l+1) segment i).
    """

    def __init__(self, size: tuple[int, int], level1: np.ndarray, superpixels: np.ndarray,
                 parents: Sequence[np.ndarray]) -> None:
        if level1.shape != superpixels.shape:
            raise ValueError(f"level-1 map {level1.shape} and superpixel map {superpixels.shape} differ in size")
        self.size = (int(size[0]), int(size[1]))
        self.detail_shape: tuple[int, int] = (int(level1.shape[0]), int(level1.shape[1]))
        self.dtype = level1.dtype
        self.superpixel_dtype = superpixels.dtype
        self._parents = [np.asarray(p, np.int64) for p in parents]
        self._level1: np.ndarray | None = level1
        self._superpixels: np.ndarray | None = superpixels
        self._path: Path | None = None
        self._full: list[np.ndarray] | None = None  # cache of level_maps() while not offloaded
        self._full_sp: np.ndarray | None = None  # cache of superpixel_map() while not offloaded
        self._lock = threading.Lock()
        self.superpixel_areas = self._superpixel_areas(superpixels)  # photo pixels per superpixel

    # -- where the maps are ----------------------------------------------------------------
    @property
    def offloaded(self) -> bool:
        """Whether the detail maps live in a file (:meth:`offload`) instead of memory."""
        return self._path is not None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def nbytes(self) -> int:
        """Bytes of array memory held now (detail maps, cached full-size maps, superpixel areas)."""
        held = [self._level1, self._superpixels, self.superpixel_areas, self._full_sp, *(self._full or [])]
        return int(sum(a.nbytes for a in held if a is not None))

    def offload(self, path: str | os.PathLike[str]) -> Path:
        """Write the detail maps to ``path`` (``.npz``, written atomically) and free them: later
        requests read the file each time and keep nothing."""
        with self._lock:
            level1, superpixels = self._detail()
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as f:
                np.savez_compressed(f, level1=level1, superpixels=superpixels)
            os.replace(tmp, path)
            self._path, self._level1, self._superpixels = path, None, None
            self._full = self._full_sp = None
            return path

    def release(self) -> None:
        """Drop the cached full-size maps (made again on the next request)."""
        self._full = self._full_sp = None

    def _detail(self) -> tuple[np.ndarray, np.ndarray]:
        if self._level1 is not None and self._superpixels is not None:
            return self._level1, self._superpixels
        assert self._path is not None
        try:
            with np.load(self._path, allow_pickle=False) as z:
                return z["level1"], z["superpixels"]
        except FileNotFoundError:
            raise MapsUnavailableError(f"the label maps file {self._path} is gone") from None

    def detail(self) -> tuple[np.ndarray, np.ndarray]:
        """``(level1, superpixels)`` at the detail resolution (read from the file when offloaded)."""
        return self._detail()

    # -- full-size maps --------------------------------------------------------------------
    def _axes(self, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Detail row and column of each full-size row/column (or of each row/column of a
        ``shape`` = (h, w) nearest-pixel resize of the full-size map)."""
        W, H = self.size
        rows, cols = axis_map(H, self.detail_shape[0]), axis_map(W, self.detail_shape[1])
        if shape is not None:
            rows, cols = rows[(np.arange(shape[0]) * H) // shape[0]], cols[(np.arange(shape[1]) * W) // shape[1]]
        return rows, cols

    def _compose(self, level1: np.ndarray, level: int) -> np.ndarray:
        m = level1
        for p in self._parents[: level - 1]:
            m = p.astype(self.dtype)[m]
        return m

    def level(self, level: int) -> np.ndarray:
        """``[H, W]`` ids of tree level ``level`` (1..4) at the photo's resolution (a new array)."""
        if not 1 <= level <= NUM_LEVELS:
            raise ValueError(f"level must be 1..{NUM_LEVELS}, got {level}")
        if self._full is not None:
            return self._full[level - 1]
        level1, _ = self._detail()
        rows, cols = self._axes()
        return self._compose(level1, level)[rows][:, cols]

    def superpixel_map(self) -> np.ndarray:
        """``[H, W]`` superpixel ids at the photo's resolution; kept (until :meth:`release`) unless offloaded."""
        if self._full_sp is not None:
            return self._full_sp
        _, sp = self._detail()
        rows, cols = self._axes()
        full = sp[rows][:, cols]
        if not self.offloaded:
            self._full_sp = full
        return full

    def level_maps(self) -> list[np.ndarray]:
        """All four levels at the photo's resolution; kept (until :meth:`release`) unless offloaded."""
        if self._full is not None:
            return self._full
        level1, _ = self._detail()
        rows, cols = self._axes()
        full = [level1[rows][:, cols]]
        for p in self._parents:  # composed from level 1 at full size: the same ids, one lookup each
            full.append(p.astype(self.dtype)[full[-1]])
        if not self.offloaded:
            self._full = full
        return full

    def images(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(file name, map)`` for ``level1..4.png`` and ``superpixels.png`` (16-bit), one at a time,
        so a writer holds one full-size map at once."""
        level1, sp = self._detail()
        rows, cols = self._axes()
        for lv in range(1, NUM_LEVELS + 1):
            yield f"level{lv}.png", self._compose(level1, lv)[rows][:, cols]
        yield "superpixels.png", sp.astype(np.uint16, copy=False)[rows][:, cols]

    def at(self, x: int, y: int, level: int) -> int:
        """Id of the level-``level`` segment under photo pixel ``(x, y)`` (no full-size map made)."""
        W, H = self.size
        if not (0 <= x < W and 0 <= y < H):
            raise IndexError(f"pixel ({x}, {y}) outside the {W}x{H} image")
        if not 1 <= level <= NUM_LEVELS:
            raise ValueError(f"level must be 1..{NUM_LEVELS}, got {level}")
        level1, _ = self._detail()
        v = int(level1[(y * self.detail_shape[0]) // H, (x * self.detail_shape[1]) // W])
        for p in self._parents[: level - 1]:
            v = int(p[v])
        return v

    def resized(self, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
        """Every level and the superpixels at ``size`` = (w, h) by nearest-pixel lookup, equal to
        resizing the full-size maps (``rows = i * H // h``) without making them."""
        level1, sp = self._detail()
        rows, cols = self._axes((size[1], size[0]))
        small = level1[rows][:, cols]
        return [self._compose(small, lv) for lv in range(1, NUM_LEVELS + 1)], sp[rows][:, cols]

    def _superpixel_areas(self, sp: np.ndarray) -> np.ndarray:
        """Photo pixels per superpixel (each detail pixel weighted by the photo pixels it stands for)."""
        rows, cols = self._axes()
        h, w = self.detail_shape
        return weighted_counts(sp, np.bincount(rows, minlength=h), np.bincount(cols, minlength=w))
