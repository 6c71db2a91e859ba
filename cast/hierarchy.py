"""The part-to-whole tree that :class:`cast.Predictor` returns, and its JSON/PNG export.

Levels are numbered 1 (finest, up to 64 segments for the published models) to 4 (coarsest, up to 8).
Segment ids are compact per level (``0..n_l-1``), ordered top-down: level-4 segments by decreasing
area, then each finer level grouped by parent (in the parent's order) and by decreasing area. So a
depth-first walk of the tree visits ids in increasing order, which keeps icicle plots tidy.

JSON schema (``schema == "cast-hierarchy"``, ``version == 1``)::

    {
      "schema": "cast-hierarchy", "version": 1,
      "image": {"width": W, "height": H, "name": str, "notes": [conversions made when reading]},
      "model": {ModelInfo fields, class_names omitted},
      "levels": [{"level": 1, "num_segments": n_1, "num_clusters": K_1}, ... 4 entries],
      "nodes": [{"key": "L1-0", "level": 1, "id": 0, "parent": 3 | null, "children": [ids one level finer],
                 "area": pixels, "area_fraction": float, "bbox": [x0, y0, x1, y1] (x1, y1 exclusive),
                 "mean_color": [r, g, b], "predictions": [[label, probability], ...] | null}, ...],
      "parents": [[level-2 id of each level-1 id], [level-3 ids], [level-4 ids]],
      "level_predictions": [[[label, probability] x top-k] x 4] | null,
      "segment_predictions": {"L2-5": [[label, probability], ...]} (masked-image recognition, on demand),
      "concepts": [{"level": 1.., "id": prototype, "confidence": float, "thumbnails": [file names]}] | null
                  (HIRL models: the image's fine-to-coarse concept path; each node also has
                   "concepts": [nearest prototype per concept level] | null),
      "superpixels": {"count": S, "working_size": [w, h], "to_level1": [level-1 id per superpixel]},
      "timings": {"stage": seconds, ...}
    }

``save(dir)`` writes ``hierarchy.json``, ``level{1..4}.png`` (8-bit label maps, value = id) and
``superpixels.png`` (16-bit) at the original resolution.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Node", "Hierarchy", "build_hierarchy", "SCHEMA_NAME", "SCHEMA_VERSION", "node_key", "parse_node_key", "boundaries"]

SCHEMA_NAME = "cast-hierarchy"
SCHEMA_VERSION = 1
NUM_LEVELS = 4

Prediction = tuple[str, float]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def node_key(level: int, node_id: int) -> str:
    return f"L{level}-{node_id}"


def parse_node_key(key: str | tuple[int, int]) -> tuple[int, int]:
    """``"L2-5"`` or ``(2, 5)`` -> ``(2, 5)``."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    try:
        level, node_id = key.upper().removeprefix("L").split("-")
        return int(level), int(node_id)
    except ValueError:
        raise ValueError(f"bad node key {key!r}; expected like 'L2-5'") from None


@dataclass
class Node:
    """One segment of the tree."""

    level: int  # 1 (finest) .. 4 (coarsest)
    id: int  # compact id within the level
    parent: int | None  # id at level + 1; None at level 4 (the whole image is the implicit root)
    children: list[int]  # ids at level - 1 (empty at level 1)
    area: int  # pixels at the original resolution
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 at the original resolution (x1, y1 exclusive)
    mean_color: tuple[int, int, int]  # RGB
    predictions: list[Prediction] | None = None  # top-k of the segment's own token through the head
    centroid: int = -1  # FPS centroid index this segment came from (model-internal)
    concepts: list[int] | None = None  # nearest semantic prototype per concept level (HIRL models only)

    @property
    def key(self) -> str:
        return node_key(self.level, self.id)

    def to_dict(self, image_area: int) -> dict[str, Any]:
        return {
            "key": self.key, "level": self.level, "id": self.id, "parent": self.parent,
            "children": list(self.children), "area": self.area,
            "area_fraction": round(self.area / max(image_area, 1), 6), "bbox": list(self.bbox),
            "mean_color": list(self.mean_color),
            "predictions": None if self.predictions is None else [[lbl, round(p, 6)] for lbl, p in self.predictions],
            "concepts": self.concepts,
        }


@dataclass
class Hierarchy:
    """Nested segmentation of one image (see the module docstring for conventions).

    Attributes:
        label_maps: 4 arrays ``[H, W]`` uint8 (uint16 beyond 256 clusters) at the original (EXIF-corrected) resolution, level 1
            finest; values are compact ids.
        parents: 3 int arrays; ``parents[l][i]`` is the level-(l+2) id containing level-(l+1)
            segment ``i`` (0-based list index), so ``parents[l][label_maps[l]] == label_maps[l+1]``.
        nodes: every segment of every level, level 1 first.
        level_predictions: per level, top-k ``(label, probability)`` from the [CLS] token after
            that stage; None for models without a head.
        superpixels: ``[H, W]`` uint16 superpixel ids at the original resolution.
        working_superpixels: ``[h, w]`` superpixel ids at the working resolution (model input).
        working_image: ``[h, w, 3]`` uint8, the image as the model saw it.
        superpixel_to_level1: level-1 id of each superpixel.
        timings: seconds per stage.
        model: the model's metadata (``ModelInfo.to_dict()``).
    """

    label_maps: list[np.ndarray]
    parents: list[np.ndarray]
    nodes: list[Node]
    level_predictions: list[list[Prediction]] | None
    superpixels: np.ndarray
    working_superpixels: np.ndarray
    working_image: np.ndarray
    superpixel_to_level1: np.ndarray
    num_clusters: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    image_name: str = ""
    image_notes: tuple[str, ...] = ()  # conversions made when reading the input (cast.image.ImageInput.notes)
    concepts: list[Any] | None = None  # the image's semantic path, cast.concepts.ConceptStep per level (HIRL models)
    segment_predictions: dict[str, list[Prediction]] = field(default_factory=dict)  # filled on demand

    # -- access ----------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        h, w = self.label_maps[0].shape
        return w, h

    @property
    def num_segments(self) -> list[int]:
        return [int(len(p)) for p in self.parents] + [len(self.nodes_at(NUM_LEVELS))]

    def nodes_at(self, level: int) -> list[Node]:
        return [n for n in self.nodes if n.level == level]

    def node(self, level: int | str, node_id: int | None = None) -> Node:
        """``node(2, 5)`` or ``node("L2-5")``."""
        if isinstance(level, str):
            level, node_id = parse_node_key(level)
        for n in self.nodes:
            if n.level == level and n.id == node_id:
                return n
        raise KeyError(f"no segment {node_key(level, node_id or 0)}")

    def segment_at(self, x: int, y: int, level: int) -> int:
        """Id of the level-``level`` segment under original-resolution pixel ``(x, y)``."""
        w, h = self.size
        if not (0 <= x < w and 0 <= y < h):
            raise IndexError(f"pixel ({x}, {y}) outside the {w}x{h} image")
        if not 1 <= level <= NUM_LEVELS:
            raise ValueError(f"level must be 1..{NUM_LEVELS}, got {level}")
        return int(self.label_maps[level - 1][y, x])

    def working_label_map(self, level: int) -> np.ndarray:
        """``[h, w]`` int64 ids of level ``level`` at the working (model input) resolution, composed
        from the superpixels (-1 where a superpixel is not visible at the original resolution)."""
        m = self.superpixel_to_level1[self.working_superpixels.astype(np.int64)]
        for p in self.parents[: level - 1]:
            m = np.where(m >= 0, p[np.maximum(m, 0)], -1)
        return m

    def masked_images(self, level: int, node_ids: Sequence[int], grey: int = 128) -> np.ndarray:
        """The working image with everything outside each segment set to ``grey``:
        ``[len(node_ids), h, w, 3]`` uint8 (the input of masked-segment recognition)."""
        m = self.working_label_map(level)
        ids = np.asarray(node_ids, dtype=np.int64)
        inside = m[None] == ids[:, None, None]
        return np.where(inside[..., None], self.working_image[None], np.uint8(grey)).astype(np.uint8)

    def path_to_root(self, level: int, node_id: int) -> list[Node]:
        """The node and its ancestors up to level 4, finest first."""
        path = [self.node(level, node_id)]
        while path[-1].parent is not None:
            path.append(self.node(path[-1].level + 1, path[-1].parent))
        return path

    # -- export ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        w, h = self.size
        area = w * h
        model = {k: v for k, v in self.model.items() if k != "class_names"}
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "image": {"width": w, "height": h, "name": self.image_name, "notes": list(self.image_notes)},
            "model": model,
            "levels": [
                {"level": lv, "num_segments": n, "num_clusters": int(k)}
                for lv, (n, k) in enumerate(zip(self.num_segments, self.num_clusters), start=1)
            ],
            "nodes": [n.to_dict(area) for n in self.nodes],
            "parents": [p.astype(int).tolist() for p in self.parents],
            "level_predictions": None if self.level_predictions is None else [
                [[lbl, round(p, 6)] for lbl, p in preds] for preds in self.level_predictions
            ],
            "segment_predictions": {k: [[lbl, round(p, 6)] for lbl, p in v] for k, v in self.segment_predictions.items()},
            "concepts": None if self.concepts is None else [step.to_dict() for step in self.concepts],
            "superpixels": {
                "count": int(self.superpixel_to_level1.shape[0]),
                "working_size": [int(self.working_superpixels.shape[1]), int(self.working_superpixels.shape[0])],
                "to_level1": self.superpixel_to_level1.astype(int).tolist(),
            },
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``hierarchy.json``, ``level1..4.png`` and ``superpixels.png`` into ``directory``."""
        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hierarchy.json").write_text(self.to_json(indent=1))
        for name, m in self.label_map_images().items():
            Image.fromarray(m).save(directory / name)
        return directory

    def label_map_images(self) -> dict[str, np.ndarray]:
        """The label maps as :meth:`save` writes them: ``level1..4.png`` (ids) and
        ``superpixels.png`` (16-bit), at the original resolution."""
        images = {f"level{lv}.png": m for lv, m in enumerate(self.label_maps, start=1)}
        images["superpixels.png"] = self.superpixels.astype(np.uint16)
        return images


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


def _axis_map(orig: int, work: int) -> np.ndarray:
    """Working-resolution index of each original row (or column): nearest, ``floor(i * work / orig)``."""
    return (np.arange(orig, dtype=np.int64) * work) // orig


def _top_k(probs: np.ndarray, names: Sequence[str], k: int) -> list[Prediction]:
    k = min(k, probs.shape[-1])
    idx = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in idx]


def build_hierarchy(
    working_superpixels: np.ndarray,
    token_labels: Sequence[np.ndarray],
    original_size: tuple[int, int],
    working_image: np.ndarray,
    num_clusters: Sequence[int],
    *,
    level_probs: Sequence[np.ndarray] | None = None,
    segment_probs: Sequence[np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
) -> Hierarchy:
    """Assemble a :class:`Hierarchy` from one image's model outputs.

    Args:
        working_superpixels: ``[h, w]`` int superpixel ids the model was given.
        token_labels: 4 arrays ``[S]``: centroid index of each superpixel's segment per level
            (``CastOutput.token_labels`` for one image).
        original_size: (width, height) to carry the label maps to.
        working_image: ``[h, w, 3]`` uint8 image the model saw (for mean colours).
        num_clusters: K per level.
        level_probs: 4 arrays ``[num_classes]`` of per-level class probabilities.
        segment_probs: 4 arrays ``[K_l, num_classes]``: probabilities of each centroid's token.
        class_names: names of the classes.
    """
    W, H = original_size
    h, w = working_superpixels.shape
    rows, cols = _axis_map(H, h), _axis_map(W, w)
    # Original pixels that each working pixel stands for; 0 where the original is smaller.
    row_w = np.bincount(rows, minlength=h).astype(np.int64)
    col_w = np.bincount(cols, minlength=w).astype(np.int64)
    weight = (row_w[:, None] * col_w[None, :]).ravel()
    sp = working_superpixels.astype(np.int64)
    num_sp = int(sp.max()) + 1
    raw_maps = [np.asarray(t, dtype=np.int64)[sp] for t in token_labels]  # 4 x [h, w] centroid ids
    img = working_image.reshape(-1, 3).astype(np.float64)
    hit_rows, hit_cols = row_w > 0, col_w > 0

    luts: list[np.ndarray] = [np.empty(0, np.int64)] * NUM_LEVELS  # raw centroid -> compact id (-1 absent)
    order: list[np.ndarray] = [np.empty(0, np.int64)] * NUM_LEVELS  # compact id -> raw centroid
    areas: list[np.ndarray] = [np.empty(0)] * NUM_LEVELS
    raw_parent: list[np.ndarray] = [np.empty(0, np.int64)] * NUM_LEVELS
    for lv in range(NUM_LEVELS - 1, -1, -1):
        k = int(num_clusters[lv])
        flat = raw_maps[lv].ravel()
        area = np.bincount(flat, weights=weight, minlength=k)
        present = np.flatnonzero(area > 0)
        if lv == NUM_LEVELS - 1:
            ranked = present[np.lexsort((present, -area[present]))]
        else:
            # parent of each raw centroid: read at any working pixel of it (levels nest)
            parent_raw = np.full(k, -1, np.int64)
            parent_raw[flat] = raw_maps[lv + 1].ravel()
            raw_parent[lv] = parent_raw
            parent_new = luts[lv + 1][parent_raw[present]]
            ranked = present[np.lexsort((present, -area[present], parent_new))]
        lut = np.full(k, -1, np.int64)
        lut[ranked] = np.arange(ranked.size)
        luts[lv], order[lv], areas[lv] = lut, ranked, area

    map_dtype = np.uint8 if max(num_clusters) <= 256 else np.uint16
    compact_work = [luts[lv][raw_maps[lv]].astype(map_dtype) for lv in range(NUM_LEVELS)]
    label_maps = [m[rows][:, cols] for m in compact_work]
    parents = [luts[lv + 1][raw_parent[lv][order[lv]]] for lv in range(NUM_LEVELS - 1)]

    nodes: list[Node] = []
    for lv in range(NUM_LEVELS):
        m = compact_work[lv]
        n = order[lv].size
        wsum = np.bincount(m.ravel(), weights=weight, minlength=n)
        color = np.stack([np.bincount(m.ravel(), weights=weight * img[:, c], minlength=n) for c in range(3)], 1)
        color = color / np.maximum(wsum, 1)[:, None]
        # bounding boxes over working rows/cols that stand for at least one original pixel
        pres_r = np.zeros((n, h), bool)
        pres_c = np.zeros((n, w), bool)
        rr, cc = np.nonzero(hit_rows[:, None] & hit_cols[None, :])
        pres_r[m[rr, cc], rr] = True
        pres_c[m[rr, cc], cc] = True
        children: list[list[int]] = [[] for _ in range(n)]
        if lv > 0:
            for child, par in enumerate(parents[lv - 1]):
                children[par].append(child)
        for i in range(n):
            r_idx, c_idx = np.flatnonzero(pres_r[i]), np.flatnonzero(pres_c[i])
            y0 = int(np.searchsorted(rows, r_idx[0], "left"))
            y1 = int(np.searchsorted(rows, r_idx[-1], "right"))
            x0 = int(np.searchsorted(cols, c_idx[0], "left"))
            x1 = int(np.searchsorted(cols, c_idx[-1], "right"))
            preds = None
            if segment_probs is not None and class_names is not None:
                preds = _top_k(segment_probs[lv][order[lv][i]], class_names, top_k)
            nodes.append(Node(
                level=lv + 1, id=i, parent=int(parents[lv][i]) if lv < NUM_LEVELS - 1 else None,
                children=children[i], area=int(round(wsum[i])), bbox=(x0, y0, x1, y1),
                mean_color=tuple(int(round(v)) for v in color[i]),  # type: ignore[arg-type]
                predictions=preds, centroid=int(order[lv][i]),
            ))

    level_predictions = None
    if level_probs is not None and class_names is not None:
        level_predictions = [_top_k(p, class_names, top_k) for p in level_probs]
    sp_dtype = np.uint16 if num_sp <= 65535 else np.int32
    return Hierarchy(
        label_maps=label_maps,
        parents=[p.astype(np.int64) for p in parents],
        nodes=nodes,
        level_predictions=level_predictions,
        superpixels=working_superpixels.astype(sp_dtype)[rows][:, cols],
        working_superpixels=working_superpixels.astype(sp_dtype),
        working_image=working_image,
        superpixel_to_level1=luts[0][np.asarray(token_labels[0], dtype=np.int64)[:num_sp]],
        num_clusters=tuple(int(k) for k in num_clusters),
    )
