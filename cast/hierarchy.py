"""The part-to-whole tree every segmenter (:class:`cast.Segmenter`) returns, and its JSON/PNG export.

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
      "nodes": [{"key": "L1-0" (cast.keys.SegmentKey), "level": 1, "id": 0, "parent": 3 | null, "children": [ids one level finer],
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .keys import NUM_LEVELS, Level, SegmentKey

__all__ = ["Node", "Hierarchy", "Readout", "build_hierarchy", "SCHEMA_NAME", "SCHEMA_VERSION", "boundaries", "Prediction"]

SCHEMA_NAME = "cast-hierarchy"
SCHEMA_VERSION = 1

Prediction = tuple[str, float]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


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
    def key(self) -> SegmentKey:
        return SegmentKey(Level(self.level), self.id)

    @property
    def parent_key(self) -> SegmentKey:
        """The parent's key; the root for level 4."""
        return SegmentKey(Level(self.level + 1), self.parent) if self.parent is not None else SegmentKey(Level.WHOLE)

    def to_dict(self, image_area: int) -> dict[str, Any]:
        return {
            "key": str(self.key), "level": self.level, "id": self.id, "parent": self.parent,
            "children": list(self.children), "area": self.area,
            "area_fraction": round(self.area / max(image_area, 1), 6), "bbox": list(self.bbox),
            "mean_color": list(self.mean_color),
            "predictions": None if self.predictions is None else [[lbl, round(p, 6)] for lbl, p in self.predictions],
            "concepts": self.concepts,
        }


def _predictions_json(preds: Iterable[Prediction]) -> list[list[Any]]:
    return [[lbl, round(p, 6)] for lbl, p in preds]


@dataclass
class Hierarchy:
    """Nested segmentation of one image (see the module docstring for conventions).

    Attributes:
        label_maps: 4 arrays ``[H, W]`` uint8 (uint16 beyond 256 clusters) at the original
            (EXIF-corrected) resolution, level 1 finest; values are compact ids.
        parents: 3 int arrays; ``parents[l][i]`` is the level-(l+2) id containing level-(l+1)
            segment ``i`` (0-based list index), so ``parents[l][label_maps[l]] == label_maps[l+1]``.
        nodes: every segment of every level, level 1 first.
        level_predictions: per level, top-k ``(label, probability)`` from the [CLS] token after
            that stage; None for models without a head.
        superpixels: ``[H, W]`` uint16 superpixel ids at the original resolution.
        working_superpixels: ``[h, w]`` superpixel ids at the working resolution (model input).
        working_image: ``[h, w, 3]`` uint8, the image as the model saw it.
        superpixel_to_level1: level-1 id of each superpixel.
        segment_predictions: masked-image recognition of segments, by key (filled on demand).
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
    segment_predictions: dict[SegmentKey, list[Prediction]] = field(default_factory=dict)

    # -- access ----------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        h, w = self.label_maps[0].shape
        return w, h

    @property
    def num_segments(self) -> list[int]:
        return [int(len(p)) for p in self.parents] + [len(self.nodes_at(NUM_LEVELS))]

    @property
    def num_superpixels(self) -> int:
        return int(self.superpixel_to_level1.shape[0])

    def nodes_at(self, level: int) -> list[Node]:
        return [n for n in self.nodes if n.level == level]

    def node(self, level: int | str | SegmentKey, node_id: int | None = None) -> Node:
        """``node(2, 5)``, ``node("L2-5")`` or ``node(SegmentKey(2, 5))``.

        Raises:
            KeyError: no such segment in this tree.
        """
        key = SegmentKey.parse(level) if isinstance(level, (str, SegmentKey)) else SegmentKey(Level(level), node_id or 0)
        if not key.is_node:
            raise KeyError(f"{key} is not a segment of the tree (levels 1-{NUM_LEVELS})")
        for n in self.nodes:
            if n.level == key.level and n.id == key.id:
                return n
        raise KeyError(f"no segment {key}")

    def has(self, key: SegmentKey) -> bool:
        """Whether ``key`` names the root, a superpixel or a segment of this tree."""
        if key.is_root:
            return True
        if key.is_superpixel:
            return key.id < self.num_superpixels
        return key.id < self.num_segments[int(key.level) - 1]

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

    def path_keys(self, key: SegmentKey) -> list[SegmentKey]:
        """Keys from the root down to ``key`` (a superpixel's path goes through its level-1 segment)."""
        if key.is_root:
            return [key]
        tail: list[SegmentKey] = []
        if key.is_superpixel:
            tail = [key]
            key = SegmentKey(Level.L1, int(self.superpixel_to_level1[key.id]))
        nodes = self.path_to_root(int(key.level), key.id)
        return [SegmentKey(Level.WHOLE)] + [n.key for n in reversed(nodes)] + tail

    # -- export ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        w, h = self.size
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
            "nodes": [n.to_dict(w * h) for n in self.nodes],
            "parents": [p.astype(int).tolist() for p in self.parents],
            "level_predictions": None if self.level_predictions is None else [
                _predictions_json(preds) for preds in self.level_predictions
            ],
            "segment_predictions": {str(k): _predictions_json(v) for k, v in self.segment_predictions.items()},
            "concepts": None if self.concepts is None else [step.to_dict() for step in self.concepts],
            "superpixels": {
                "count": self.num_superpixels,
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


@dataclass
class Readout:
    """What a segmenter read from its model for one image, at the working resolution: the input of
    :func:`build_hierarchy`. Per-centroid arrays are indexed by the raw centroid index of a level."""

    superpixels: np.ndarray  # [h, w] int superpixel ids the model was given
    token_labels: list[np.ndarray]  # 4 x [S]: centroid index of each superpixel's segment per level
    num_clusters: tuple[int, ...]  # K per level
    level_probs: list[np.ndarray] | None = None  # 4 x [num_classes] per-level class probabilities
    segment_probs: list[np.ndarray] | None = None  # 4 x [K_l, num_classes]: each centroid's own token
    segment_concepts: list[np.ndarray] | None = None  # 4 x [K_l, L]: each centroid's nearest concept per level
    concepts: list[Any] | None = None  # the image's concept path (cast.concepts.ConceptStep per level)
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the model's own stages


@dataclass
class _Level:
    """One level while the tree is built (raw centroid ids -> compact ids)."""

    raw: np.ndarray  # [h, w] raw centroid id of every working pixel
    lut: np.ndarray  # raw centroid -> compact id (-1 absent)
    order: np.ndarray  # compact id -> raw centroid
    raw_parent: np.ndarray  # raw centroid -> raw centroid one level up (-1 absent; empty at level 4)


def _axis_map(orig: int, work: int) -> np.ndarray:
    """Working-resolution index of each original row (or column): nearest, ``floor(i * work / orig)``."""
    return (np.arange(orig, dtype=np.int64) * work) // orig


def _top_k(probs: np.ndarray, names: Sequence[str], k: int) -> list[Prediction]:
    k = min(k, probs.shape[-1])
    idx = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in idx]


def _rank_levels(raw_maps: list[np.ndarray], num_clusters: Sequence[int], weight: np.ndarray) -> list[_Level]:
    """Compact ids per level, top-down: level 4 by decreasing area, then each finer level grouped
    by parent (in the parent's order) and by decreasing area; empty centroids are dropped."""
    levels: list[_Level | None] = [None] * NUM_LEVELS
    for lv in range(NUM_LEVELS - 1, -1, -1):
        k = int(num_clusters[lv])
        flat = raw_maps[lv].ravel()
        area = np.bincount(flat, weights=weight, minlength=k)
        present = np.flatnonzero(area > 0)
        raw_parent = np.empty(0, np.int64)
        if lv == NUM_LEVELS - 1:
            ranked = present[np.lexsort((present, -area[present]))]
        else:
            up = levels[lv + 1]
            assert up is not None
            raw_parent = np.full(k, -1, np.int64)
            raw_parent[flat] = raw_maps[lv + 1].ravel()  # read at any working pixel of it (levels nest)
            ranked = present[np.lexsort((present, -area[present], up.lut[raw_parent[present]]))]
        lut = np.full(k, -1, np.int64)
        lut[ranked] = np.arange(ranked.size)
        levels[lv] = _Level(raw_maps[lv], lut, ranked, raw_parent)
    return [lv for lv in levels if lv is not None]


def _level_nodes(lv: int, m: np.ndarray, parents: list[np.ndarray], weight: np.ndarray, img: np.ndarray,
                 rows: np.ndarray, cols: np.ndarray, n: int) -> list[Node]:
    """The nodes of level ``lv + 1`` from its compact working-size map ``m`` (areas, bounding boxes
    and colours weighted by the original pixels each working pixel stands for)."""
    h, w = m.shape
    wsum = np.bincount(m.ravel(), weights=weight, minlength=n)
    color = np.stack([np.bincount(m.ravel(), weights=weight * img[:, c], minlength=n) for c in range(3)], 1)
    color = color / np.maximum(wsum, 1)[:, None]
    # bounding boxes over working rows/cols that stand for at least one original pixel
    hit_rows = np.bincount(rows, minlength=h) > 0
    hit_cols = np.bincount(cols, minlength=w) > 0
    pres_r = np.zeros((n, h), bool)
    pres_c = np.zeros((n, w), bool)
    rr, cc = np.nonzero(hit_rows[:, None] & hit_cols[None, :])
    pres_r[m[rr, cc], rr] = True
    pres_c[m[rr, cc], cc] = True
    children: list[list[int]] = [[] for _ in range(n)]
    if lv > 0:
        for child, par in enumerate(parents[lv - 1]):
            children[par].append(child)
    nodes = []
    for i in range(n):
        r_idx, c_idx = np.flatnonzero(pres_r[i]), np.flatnonzero(pres_c[i])
        bbox = (int(np.searchsorted(cols, c_idx[0], "left")), int(np.searchsorted(rows, r_idx[0], "left")),
                int(np.searchsorted(cols, c_idx[-1], "right")), int(np.searchsorted(rows, r_idx[-1], "right")))
        nodes.append(Node(
            level=lv + 1, id=i, parent=int(parents[lv][i]) if lv < NUM_LEVELS - 1 else None,
            children=children[i], area=int(round(wsum[i])), bbox=bbox,
            mean_color=tuple(int(round(v)) for v in color[i]),  # type: ignore[arg-type]
        ))
    return nodes


def build_hierarchy(readout: Readout, working_image: np.ndarray, original_size: tuple[int, int], *,
                    class_names: Sequence[str] | None = None, top_k: int = 5, image_name: str = "",
                    image_notes: Sequence[str] = (), model: dict[str, Any] | None = None) -> Hierarchy:
    """Assemble a :class:`Hierarchy` from one image's :class:`Readout`.

    Args:
        readout: the model's outputs for the image, at the working resolution.
        working_image: ``[h, w, 3]`` uint8 image the model saw (for mean colours).
        original_size: (width, height) to carry the label maps to (nearest-neighbour lookup).
        class_names: names of the head's classes (predictions are attached only with names).
        image_name, image_notes, model: carried into the tree as they are.
    """
    sp = readout.superpixels.astype(np.int64)
    W, H = original_size
    h, w = sp.shape
    rows, cols = _axis_map(H, h), _axis_map(W, w)
    # original pixels that each working pixel stands for; 0 where the original is smaller
    weight = (np.bincount(rows, minlength=h)[:, None] * np.bincount(cols, minlength=w)[None, :]).ravel().astype(np.int64)
    num_sp = int(sp.max()) + 1
    raw_maps = [np.asarray(t, dtype=np.int64)[sp] for t in readout.token_labels]  # 4 x [h, w] centroid ids
    levels = _rank_levels(raw_maps, readout.num_clusters, weight)
    map_dtype = np.uint8 if max(readout.num_clusters) <= 256 else np.uint16
    compact = [lev.lut[lev.raw].astype(map_dtype) for lev in levels]
    parents = [levels[lv + 1].lut[levels[lv].raw_parent[levels[lv].order]] for lv in range(NUM_LEVELS - 1)]
    img = working_image.reshape(-1, 3).astype(np.float64)
    nodes: list[Node] = []
    for lv in range(NUM_LEVELS):
        level_nodes = _level_nodes(lv, compact[lv], parents, weight, img, rows, cols, levels[lv].order.size)
        for node in level_nodes:
            centroid = int(levels[lv].order[node.id])
            node.centroid = centroid
            if readout.segment_probs is not None and class_names is not None:
                node.predictions = _top_k(readout.segment_probs[lv][centroid], class_names, top_k)
            if readout.segment_concepts is not None:
                node.concepts = [int(c) for c in readout.segment_concepts[lv][centroid]]
        nodes += level_nodes
    level_predictions = None
    if readout.level_probs is not None and class_names is not None:
        level_predictions = [_top_k(p, class_names, top_k) for p in readout.level_probs]
    sp_dtype = np.uint16 if num_sp <= 65535 else np.int32
    return Hierarchy(
        label_maps=[m[rows][:, cols] for m in compact],
        parents=[p.astype(np.int64) for p in parents],
        nodes=nodes,
        level_predictions=level_predictions,
        superpixels=sp.astype(sp_dtype)[rows][:, cols],
        working_superpixels=sp.astype(sp_dtype),
        working_image=working_image,
        superpixel_to_level1=levels[0].lut[np.asarray(readout.token_labels[0], dtype=np.int64)[:num_sp]],
        num_clusters=tuple(int(k) for k in readout.num_clusters),
        model=dict(model or {}),
        image_name=image_name,
        image_notes=tuple(image_notes),
        concepts=readout.concepts,
        timings=dict(readout.timings),
    )
