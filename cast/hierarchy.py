"""The part-to-whole tree every segmenter (:class:`cast.Segmenter`) returns, and its JSON/PNG export.

Levels are numbered 1 (finest, up to 64 segments for the published models) to 4 (coarsest, up to 8).
Segment ids are compact per level (``0..n_l-1``), ordered top-down: level-4 segments by decreasing
area, then each finer level grouped by parent (in the parent's order) and by decreasing area. So a
depth-first walk of the tree visits ids in increasing order, which keeps icicle plots tidy.

JSON schema (``schema == "cast-hierarchy"``, ``version == 3``; version 2 had no ``"taxonomy"`` and no
node ``"taxonomy_predictions"``, version 1 no ``"annotations"``; older files read as having none)::

    {
      "schema": "cast-hierarchy", "version": 3,
      "image": {"width": W, "height": H, "name": str, "notes": [conversions made when reading]},
      "model": {ModelInfo fields, class_names omitted, taxonomy as {"levels": [names], "classes": [counts]}},
      "levels": [{"level": 1, "num_segments": n_1, "num_clusters": K_1}, ... 4 entries],
      "nodes": [{"key": "L1-0" (cast.keys.SegmentKey), "level": 1, "id": 0, "parent": 3 | null, "children": [ids one level finer],
                 "area": pixels, "area_fraction": float, "bbox": [x0, y0, x1, y1] (x1, y1 exclusive),
                 "mean_color": [r, g, b], "predictions": [[label, probability], ...] | null,
                 "taxonomy_predictions": [[label, probability], ...] | null (hierarchical models: the segment's
                 own token through the head of the taxonomy level its tree level answers)}, ...],
      "parents": [[level-2 id of each level-1 id], [level-3 ids], [level-4 ids]],
      "level_predictions": [[[label, probability] x top-k] x 4] | null,
      "taxonomy": {"levels": [{"name": "species", "tree_level": 1, "predictions": [[label, probability] x top-k]},
                              ... fine -> coarse],
                   "argmax_path": [label per level], "consistent_path": [label per level] | null,
                   "heads_agree": bool | null} | null
                  (hierarchical models (H-CAST): each taxonomy head's prediction and the tree level (1..3) it
                   reads; the consistent path is the valid path of the model's taxonomy with the highest
                   summed log-probability, null without a taxonomy; heads_agree: whether the heads' own
                   argmaxes form a valid path),
      "segment_predictions": {"L2-5": [[label, probability], ...]} (masked-image recognition, on demand),
      "concepts": [{"level": 1.., "id": prototype, "confidence": float, "thumbnails": [file names]}] | null
                  (HIRL models: the image's fine-to-coarse concept path; each node also has
                   "concepts": [nearest prototype per concept level] | null),
      "superpixels": {"count": S, "working_size": [w, h], "to_level1": [level-1 id per superpixel]},
      "annotations": {"allow_overlap": bool, "next_id": int, "regions": [{"id": "R1", "label": str,
                      "nodes": ["L2-5", ...], "parent": "R0" | null}, ...]} | null (cast.annotations),
      "timings": {"stage": seconds, ...}
    }

``save(dir)`` writes ``hierarchy.json``, ``level{1..4}.png`` (8-bit label maps, value = id) and
``superpixels.png`` (16-bit) at the original resolution.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .keys import NUM_LEVELS, Level, SegmentKey
from .labelmaps import LabelMaps, weighted_counts
from .refine import RefineSettings, axis_map, refine_labels
from .taxonomy import DEFAULT_LEVEL_NAMES, Taxonomy

__all__ = ["Node", "Hierarchy", "Readout", "build_hierarchy", "TaxonomyPrediction", "TaxonomyLevelPrediction",
           "SCHEMA_NAME", "SCHEMA_VERSION", "boundaries", "Prediction"]

SCHEMA_NAME = "cast-hierarchy"
SCHEMA_VERSION = 3  # 3: "taxonomy"; 2: "annotations" (cast.annotations); older files are read as having none

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
    taxonomy_predictions: list[Prediction] | None = None  # hierarchical models: own token through its level's head

    @property
    def key(self) -> SegmentKey:
        return SegmentKey(Level(self.level), self.id)

    @property
    def own_predictions(self) -> list[Prediction] | None:
        """What the model says of this segment: its token through the flat head, or (hierarchical
        models) through its level's head; None where no head reads it."""
        return self.predictions or self.taxonomy_predictions

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
            "taxonomy_predictions": None if self.taxonomy_predictions is None else _predictions_json(self.taxonomy_predictions),
        }


def _predictions_json(preds: Iterable[Prediction]) -> list[list[Any]]:
    return [[lbl, round(p, 6)] for lbl, p in preds]


@dataclass
class TaxonomyLevelPrediction:
    """One taxonomy level's head on one image."""

    name: str  # the taxonomy level ("species", "family", ...)
    tree_level: int  # the tree level (1..3) whose [CLS] and segments the head reads
    predictions: list[Prediction]  # top-k, best first


@dataclass
class TaxonomyPrediction:
    """A hierarchical model's per-level predictions on one image (fine -> coarse)."""

    levels: list[TaxonomyLevelPrediction]
    argmax_path: list[str]  # each head's own best class
    consistent_path: list[str] | None  # the valid path with the highest summed log-probability (None: no taxonomy)
    heads_agree: bool | None  # whether argmax_path is a path of the taxonomy (None: no taxonomy)

    def level_at(self, tree_level: int) -> TaxonomyLevelPrediction | None:
        """The taxonomy level a tree level answers (None for tree levels no head reads)."""
        return next((lv for lv in self.levels if lv.tree_level == tree_level), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": [{"name": lv.name, "tree_level": lv.tree_level, "predictions": _predictions_json(lv.predictions)}
                       for lv in self.levels],
            "argmax_path": list(self.argmax_path), "consistent_path": self.consistent_path, "heads_agree": self.heads_agree,
        }


@dataclass
class Hierarchy:
    """Nested segmentation of one image (see the module docstring for conventions).

    Attributes:
        maps: the label maps at the original resolution, held compactly (:class:`cast.labelmaps.LabelMaps`:
            made on request, or read from a file after :meth:`offload`).
        label_maps: 4 arrays ``[H, W]`` uint8 (uint16 beyond 256 clusters) at the original
            (EXIF-corrected) resolution, level 1 finest; values are compact ids (made from ``maps``
            on first use and kept, unless the tree is offloaded).
        parents: 3 int arrays; ``parents[l][i]`` is the level-(l+2) id containing level-(l+1)
            segment ``i`` (0-based list index), so ``parents[l][label_maps[l]] == label_maps[l+1]``.
        nodes: every segment of every level, level 1 first.
        level_predictions: per level, top-k ``(label, probability)`` from the [CLS] token after
            that stage; None for models without a head.
        superpixels: ``[H, W]`` uint16 superpixel ids at the original resolution (made like ``label_maps``).
        working_superpixels: ``[h, w]`` superpixel ids at the working resolution (model input).
        working_image: ``[h, w, 3]`` uint8, the image as the model saw it.
        superpixel_to_level1: level-1 id of each superpixel.
        segment_predictions: masked-image recognition of segments, by key (filled on demand).
        timings: seconds per stage.
        model: the model's metadata (``ModelInfo.to_dict()``).
    """

    maps: LabelMaps
    parents: list[np.ndarray]
    nodes: list[Node]
    level_predictions: list[list[Prediction]] | None
    working_superpixels: np.ndarray
    working_image: np.ndarray
    superpixel_to_level1: np.ndarray
    num_clusters: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    image_name: str = ""
    taxonomy: TaxonomyPrediction | None = None  # hierarchical models (H-CAST): per taxonomy level
    image_notes: tuple[str, ...] = ()  # conversions made when reading the input (cast.image.ImageInput.notes)
    concepts: list[Any] | None = None  # the image's semantic path, cast.concepts.ConceptStep per level (HIRL models)
    segment_predictions: dict[SegmentKey, list[Prediction]] = field(default_factory=dict)
    annotations: Any = None  # cast.annotations.Annotations of this tree, when someone annotated it

    # -- access ----------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.maps.size

    @property
    def label_maps(self) -> list[np.ndarray]:
        """The 4 full-resolution label maps (see the class docstring); on an offloaded tree they are
        read from its file on each access and not kept, so hold on to the list while using it."""
        return self.maps.level_maps()

    @property
    def superpixels(self) -> np.ndarray:
        """``[H, W]`` superpixel ids at the original resolution (made on request like :attr:`label_maps`)."""
        return self.maps.superpixel_map()

    def label_map(self, level: int) -> np.ndarray:
        """One level's ``[H, W]`` map at the original resolution (only that one is made)."""
        return self.maps.level(level)

    def offload(self, path: str | os.PathLike[str]) -> Path:
        """Move the label maps to ``path`` (``.npz``) and free their memory: the tree keeps its
        nodes, working-size maps and predictions; full-size maps are read back when asked for.

        Raises:
            cast.labelmaps.MapsUnavailableError: (later, on access) the file was removed.
        """
        return self.maps.offload(path)

    @property
    def nbytes(self) -> int:
        """Array memory this tree holds (maps, working image and superpixels), in bytes."""
        arrays = [self.working_superpixels, self.working_image, self.superpixel_to_level1, *self.parents]
        return self.maps.nbytes + int(sum(a.nbytes for a in arrays))

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
        """Id of the level-``level`` segment under original-resolution pixel ``(x, y)``.

        Raises:
            IndexError: the pixel is outside the image. ValueError: no such level."""
        return self.maps.at(x, y, level)

    def working_label_map(self, level: int) -> np.ndarray:
        """``[h, w]`` int64 ids of level ``level`` at the working (model input) resolution, composed
        from the superpixels (-1 where a superpixel is not visible at the original resolution)."""
        m = self.superpixel_to_level1[self.working_superpixels.astype(np.int64)]
        for p in self.parents[: level - 1]:
            m = np.where(m >= 0, p[np.maximum(m, 0)], -1)
        return m

    def nearest_label_maps(self) -> list[np.ndarray]:
        """The label maps without boundary refinement: each level's working-size map carried to the
        original size by nearest lookup, with this tree's ids (``refine=False`` gives the same
        segments; its ids follow the unrefined areas). Equal to :attr:`label_maps` when the photo
        is not larger than the working size."""
        W, H = self.size
        h, w = self.working_superpixels.shape
        rows, cols = axis_map(H, h), axis_map(W, w)
        dtype = self.maps.dtype
        return [self.working_label_map(lv).astype(dtype)[rows][:, cols] for lv in range(1, NUM_LEVELS + 1)]

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
        if isinstance(model.get("taxonomy"), dict):  # its shape only (read from the dict, per image: no re-validation)
            levels = model["taxonomy"].get("levels", [])
            model["taxonomy"] = {"levels": [lv.get("name") for lv in levels], "classes": [len(lv.get("classes", [])) for lv in levels]}
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
            "taxonomy": None if self.taxonomy is None else self.taxonomy.to_dict(),
            "superpixels": {
                "count": self.num_superpixels,
                "working_size": [int(self.working_superpixels.shape[1]), int(self.working_superpixels.shape[0])],
                "to_level1": self.superpixel_to_level1.astype(int).tolist(),
            },
            "annotations": None if self.annotations is None else self.annotations.to_dict(),
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
        for name, m in self.maps.images():
            Image.fromarray(m).save(directory / name)
        return directory

    def label_map_images(self) -> dict[str, np.ndarray]:
        """The label maps as :meth:`save` writes them: ``level1..4.png`` (ids) and
        ``superpixels.png`` (16-bit), at the original resolution (all at once: writers that
        should hold one map at a time iterate ``tree.maps.images()``)."""
        return dict(self.maps.images())


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
    # hierarchical heads (H-CAST), per taxonomy level fine -> coarse:
    taxonomy_probs: list[np.ndarray] | None = None  # T x [classes_t] each head on its [CLS]
    taxonomy_tree_levels: tuple[int, ...] | None = None  # T: the tree level (1..3) each head reads
    segment_taxonomy_probs: list[np.ndarray] | None = None  # T x [K_l, classes_t] that level's centroids' own tokens
    concepts: list[Any] | None = None  # the image's concept path (cast.concepts.ConceptStep per level)
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the model's own stages


@dataclass
class _Level:
    """One level while the tree is built (raw centroid ids -> compact ids)."""

    lut: np.ndarray  # raw centroid -> compact id (-1 absent)
    order: np.ndarray  # compact id -> raw centroid
    area: np.ndarray  # original pixels per raw centroid


def _top_k(probs: np.ndarray, names: Sequence[str], k: int) -> list[Prediction]:
    k = min(k, probs.shape[-1])
    idx = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in idx]


def _raw_parents(token_labels: Sequence[np.ndarray], num_clusters: Sequence[int]) -> list[np.ndarray]:
    """Per level 1..3: the raw centroid one level up of each raw centroid (-1 where none maps)."""
    out = []
    for lv in range(NUM_LEVELS - 1):
        parent = np.full(int(num_clusters[lv]), -1, np.int64)
        parent[np.asarray(token_labels[lv], np.int64)] = np.asarray(token_labels[lv + 1], np.int64)
        out.append(parent)
    return out


def _rank_levels(area1: np.ndarray, raw_parents: list[np.ndarray], num_clusters: Sequence[int]) -> list[_Level]:
    """Compact ids per level, top-down: level 4 by decreasing area, then each finer level grouped
    by parent (in the parent's order) and by decreasing area; empty centroids are dropped.
    ``area1`` is the original-pixel area of each raw level-1 centroid; coarser areas add up."""
    areas = [area1]
    for lv in range(NUM_LEVELS - 1):
        src = np.flatnonzero(areas[-1] > 0)
        areas.append(np.bincount(raw_parents[lv][src], weights=areas[-1][src], minlength=int(num_clusters[lv + 1])))
    levels: list[_Level | None] = [None] * NUM_LEVELS
    for lv in range(NUM_LEVELS - 1, -1, -1):
        area = areas[lv]
        present = np.flatnonzero(area > 0)
        if lv == NUM_LEVELS - 1:
            ranked = present[np.lexsort((present, -area[present]))]
        else:
            up = levels[lv + 1]
            assert up is not None
            ranked = present[np.lexsort((present, -area[present], up.lut[raw_parents[lv][present]]))]
        lut = np.full(area.shape[0], -1, np.int64)
        lut[ranked] = np.arange(ranked.size)
        levels[lv] = _Level(lut, ranked, area)
    return [lv for lv in levels if lv is not None]


def _detail_maps(readout: Readout, working_image: np.ndarray, detail_image: np.ndarray | None,
                 refine: RefineSettings | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw level-1 centroid map, superpixel map and image at the *detail* resolution: the working
    size, or the photo's (capped) size when refining."""
    sp = readout.superpixels.astype(np.int64)
    tl1 = np.asarray(readout.token_labels[0], np.int64)
    raw1 = tl1[sp]
    if detail_image is None or refine is None or not refine.enabled or detail_image.shape[:2] == sp.shape:
        return raw1, sp, working_image
    small = np.int16 if int(raw1.max()) < 32767 else np.int32  # the detail map is the largest array: a small type
    raw1_d = refine_labels(detail_image, raw1.astype(small), working_image, refine)
    # superpixels follow their level-1 segment: a pixel whose nearest superpixel now lies in another
    # segment takes a neighbouring superpixel of its new segment (else the segment's largest)
    H, W = detail_image.shape[:2]
    rows, cols = axis_map(H, sp.shape[0]), axis_map(W, sp.shape[1])
    sp_dtype = np.uint16 if sp.size and int(sp.max()) < 65535 else np.int32  # small types: ~6 MP maps here
    sp_d = sp.astype(sp_dtype)[rows][:, cols]
    tl1_small = tl1.astype(np.uint8 if tl1.size and int(tl1.max()) < 256 else np.int32)
    wrong = tl1_small[sp_d] != raw1_d
    if wrong.any():
        sp_d[wrong] = _superpixel_in(raw1_d[wrong], sp, tl1, np.nonzero(wrong), rows, cols)
    return raw1_d, sp_d, detail_image


def _superpixel_in(segment: np.ndarray, sp: np.ndarray, tl1: np.ndarray, where: tuple[np.ndarray, ...],
                   rows: np.ndarray, cols: np.ndarray, window: int = 3) -> np.ndarray:
    """For pixels at ``where`` (detail coordinates), a superpixel of raw level-1 ``segment`` among
    the working neighbours (nearest first), else that segment's largest superpixel."""
    h, w = sp.shape
    largest = np.zeros(int(tl1.max()) + 1, np.int64)  # per raw level-1 centroid
    sizes = np.bincount(sp.ravel(), minlength=tl1.shape[0])
    order = np.argsort(sizes, kind="stable")  # ascending: each segment's largest superpixel is written last
    largest[tl1[order]] = order
    out = largest[segment].astype(np.int32)  # int32 throughout: these arrays are per changed pixel
    todo = np.arange(segment.size, dtype=np.int32)
    wy, wx = rows[where[0]].astype(np.int32), cols[where[1]].astype(np.int32)
    ring = sorted(((dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1) if dy or dx),
                  key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    for dy, dx in ring:
        if todo.size == 0:
            break
        cand = sp[np.clip(wy[todo] + dy, 0, h - 1), np.clip(wx[todo] + dx, 0, w - 1)]
        hit = tl1[cand] == segment[todo]
        out[todo[hit]] = cand[hit]
        todo = todo[~hit]
    return out


def _colour_sums(raw1: np.ndarray, image: np.ndarray, row_w: np.ndarray, col_w: np.ndarray, k: int, area1: np.ndarray,
                 exact: bool) -> np.ndarray:
    """``[k, 3]`` colour sums (original-pixel weighted) of each raw level-1 centroid. On refined
    (photo-size) maps the mean colours come from a pixel grid of at most ~0.3 MP, scaled to the areas."""
    step = 1 if exact else max(1, int(np.ceil((raw1.size / 300_000) ** 0.5)))
    if step == 1:  # a small map (the working size, or a small photo): exact, original-pixel weighted
        weight = (row_w[:, None] * col_w[None, :]).ravel().astype(np.int64)
        img = image.reshape(-1, 3).astype(np.float64)
        return np.stack([np.bincount(raw1.ravel(), weights=weight * img[:, c], minlength=k) for c in range(3)], 1)
    sub, pix = raw1[::step, ::step].ravel(), image[::step, ::step].reshape(-1, 3).astype(np.float64)
    count = np.bincount(sub, minlength=k)
    mean = np.stack([np.bincount(sub, weights=pix[:, c], minlength=k) for c in range(3)], 1) / np.maximum(count, 1)[:, None]
    return mean * area1[:, None]


def _bboxes(compact1: np.ndarray, n1: int, parents: list[np.ndarray], rows: np.ndarray, cols: np.ndarray
            ) -> list[np.ndarray]:
    """Per level ``[n_l, 4]`` boxes (x0, y0, x1, y1, original pixels, ends exclusive): level 1 from
    its detail map (rows/cols that stand for at least one original pixel), coarser ones as unions."""
    hit_r = np.flatnonzero(np.bincount(rows, minlength=compact1.shape[0]) > 0)
    hit_c = np.flatnonzero(np.bincount(cols, minlength=compact1.shape[1]) > 0)
    m = compact1 if hit_r.size == compact1.shape[0] and hit_c.size == compact1.shape[1] else compact1[hit_r][:, hit_c]
    box = np.zeros((n1, 4), np.int64)
    for i, sl in enumerate(ndimage.find_objects(m.astype(np.int32) + 1, max_label=n1)):
        if sl is None:
            continue
        r0, r1 = hit_r[sl[0].start], hit_r[sl[0].stop - 1]
        c0, c1 = hit_c[sl[1].start], hit_c[sl[1].stop - 1]
        box[i] = (np.searchsorted(cols, c0, "left"), np.searchsorted(rows, r0, "left"),
                  np.searchsorted(cols, c1, "right"), np.searchsorted(rows, r1, "right"))
    boxes = [box]
    for par in parents:
        up = np.zeros((int(par.max()) + 1 if par.size else 0, 4), np.int64)
        up[:, :2] = np.iinfo(np.int64).max
        np.minimum.at(up[:, 0], par, boxes[-1][:, 0])
        np.minimum.at(up[:, 1], par, boxes[-1][:, 1])
        np.maximum.at(up[:, 2], par, boxes[-1][:, 2])
        np.maximum.at(up[:, 3], par, boxes[-1][:, 3])
        boxes.append(up)
    return boxes


def _nodes(levels: list[_Level], parents: list[np.ndarray], boxes: list[np.ndarray], colour_sum1: np.ndarray,
           readout: Readout, class_names: Sequence[str] | None, top_k: int,
           taxonomy_names: list[Sequence[str]] | None = None) -> list[Node]:
    """Every node, level 1 first (areas and colours add up from level 1 through the parents)."""
    nodes: list[Node] = []
    colour = colour_sum1[levels[0].order]
    for lv, level in enumerate(levels):
        n = level.order.size
        area = level.area[level.order]
        if lv > 0:
            colour = np.stack([np.bincount(parents[lv - 1], weights=colour[:, c], minlength=n) for c in range(3)], 1)
        mean = colour / np.maximum(area, 1)[:, None]
        children: list[list[int]] = [[] for _ in range(n)]
        if lv > 0:
            for child, par in enumerate(parents[lv - 1]):
                children[par].append(child)
        for i in range(n):
            centroid = int(level.order[i])
            node = Node(level=lv + 1, id=i, parent=int(parents[lv][i]) if lv < NUM_LEVELS - 1 else None,
                        children=children[i], area=int(round(area[i])), bbox=tuple(int(v) for v in boxes[lv][i]),  # type: ignore[arg-type]
                        mean_color=tuple(int(round(v)) for v in mean[i]), centroid=centroid)  # type: ignore[arg-type]
            if readout.segment_probs is not None and class_names is not None:
                node.predictions = _top_k(readout.segment_probs[lv][centroid], class_names, top_k)
            if readout.segment_concepts is not None:
                node.concepts = [int(c) for c in readout.segment_concepts[lv][centroid]]
            if taxonomy_names is not None and readout.segment_taxonomy_probs is not None and readout.taxonomy_tree_levels:
                if lv + 1 in readout.taxonomy_tree_levels:
                    t = readout.taxonomy_tree_levels.index(lv + 1)
                    node.taxonomy_predictions = _top_k(readout.segment_taxonomy_probs[t][centroid], taxonomy_names[t], top_k)
            nodes.append(node)
    return nodes


def build_hierarchy(readout: Readout, working_image: np.ndarray, original_size: tuple[int, int], *,
                    class_names: Sequence[str] | None = None, top_k: int = 5, image_name: str = "",
                    image_notes: Sequence[str] = (), model: dict[str, Any] | None = None,
                    detail_image: np.ndarray | None = None, refine: RefineSettings | None = None,
                    taxonomy: Taxonomy | None = None) -> Hierarchy:
    """Assemble a :class:`Hierarchy` from one image's :class:`Readout`.

    Args:
        readout: the model's outputs for the image, at the working resolution.
        working_image: ``[h, w, 3]`` uint8 image the model saw.
        original_size: (width, height) of the label maps to produce.
        class_names: names of the head's classes (predictions are attached only with names).
        image_name, image_notes, model: carried into the tree as they are.
        detail_image: the photo at the resolution to refine boundaries at (the original size, or
            less for very large photos); with ``refine`` enabled, level-1 boundaries follow it
            (:func:`cast.refine.refine_labels`) and every coarser level is composed from level 1, so
            levels nest exactly. Without it the maps are the working ones, carried by nearest lookup.
        taxonomy: a hierarchical model's taxonomy (names per level and the valid paths) for its
            per-level predictions (``readout.taxonomy_probs``); without one, levels are named by
            default and no consistent path is given.
    """
    num_clusters = tuple(int(k) for k in readout.num_clusters)
    t0 = time.perf_counter()
    raw1, sp_d, img_d = _detail_maps(readout, working_image, detail_image, refine)
    refined = img_d is not working_image
    refine_s = time.perf_counter() - t0
    W, H = original_size
    dh, dw = raw1.shape
    rows, cols = axis_map(H, dh), axis_map(W, dw)
    # original pixels that each detail pixel stands for (row weight x column weight; 0 where the original is smaller)
    row_w, col_w = np.bincount(rows, minlength=dh), np.bincount(cols, minlength=dw)
    if (dh, dw) == (H, W):  # every detail pixel is one original pixel
        area1 = np.bincount(raw1.ravel(), minlength=num_clusters[0]).astype(np.float64)
    else:
        area1 = weighted_counts(raw1, row_w, col_w, num_clusters[0]).astype(np.float64)[: max(num_clusters[0], 1)]
    colour1 = _colour_sums(raw1, img_d, row_w, col_w, num_clusters[0], area1, exact=not refined)
    raw_parents = _raw_parents(readout.token_labels, num_clusters)
    levels = _rank_levels(area1, raw_parents, num_clusters)
    parents = [levels[lv + 1].lut[raw_parents[lv][levels[lv].order]] for lv in range(NUM_LEVELS - 1)]
    map_dtype = np.uint8 if max(num_clusters) <= 256 else np.uint16
    compact1 = levels[0].lut.astype(map_dtype)[raw1]
    boxes = _bboxes(compact1, levels[0].order.size, parents, rows, cols)
    level_predictions = None
    if readout.level_probs is not None and class_names is not None:
        level_predictions = [_top_k(p, class_names, top_k) for p in readout.level_probs]
    taxonomy_names, taxonomy_prediction = _taxonomy_prediction(readout, taxonomy, class_names, top_k)
    num_sp = int(readout.superpixels.max()) + 1
    sp_dtype = np.uint16 if num_sp <= 65535 else np.int32
    parents = [p.astype(np.int64) for p in parents]
    return Hierarchy(  # full-size maps are made from the detail ones on request; coarser levels composed from level 1
        maps=LabelMaps((W, H), compact1, sp_d.astype(sp_dtype), parents),
        parents=parents,
        nodes=_nodes(levels, parents, boxes, colour1, readout, class_names, top_k, taxonomy_names),
        level_predictions=level_predictions,
        working_superpixels=readout.superpixels.astype(sp_dtype),
        working_image=working_image,
        superpixel_to_level1=levels[0].lut[np.asarray(readout.token_labels[0], dtype=np.int64)[:num_sp]],
        num_clusters=num_clusters,
        model=dict(model or {}),
        image_name=image_name,
        image_notes=tuple(image_notes),
        concepts=readout.concepts,
        taxonomy=taxonomy_prediction,
        timings={"refine": refine_s} if refined else {},
    )


def _taxonomy_prediction(readout: Readout, taxonomy: Taxonomy | None, class_names: Sequence[str] | None,
                         top_k: int) -> tuple[list[Sequence[str]] | None, TaxonomyPrediction | None]:
    """Class names per taxonomy level and the image's :class:`TaxonomyPrediction` (None, None for a flat model)."""
    probs, tree_levels = readout.taxonomy_probs, readout.taxonomy_tree_levels
    if probs is None or tree_levels is None:
        return None, None
    sizes = [int(p.shape[-1]) for p in probs]
    if taxonomy is not None and list(taxonomy.sizes) != sizes:
        raise ValueError(f"the taxonomy has {taxonomy.sizes} classes per level, the heads {tuple(sizes)}")
    if taxonomy is not None:
        level_names, names = list(taxonomy.level_names), [list(c) for c in taxonomy.classes]
    else:
        level_names = list(DEFAULT_LEVEL_NAMES.get(len(sizes), [f"level {i + 1}" for i in range(len(sizes))]))
        names = [[f"{level_names[t]} {i}" for i in range(n)] for t, n in enumerate(sizes)]
        if class_names is not None and len(class_names) == sizes[0]:
            names[0] = list(class_names)
    levels = [TaxonomyLevelPrediction(level_names[t], int(tree_levels[t]), _top_k(p, names[t], top_k))
              for t, p in enumerate(probs)]
    argmax = [int(np.argmax(p)) for p in probs]
    consistent = agree = None
    if taxonomy is not None:
        best = taxonomy.consistent_path([np.log(np.maximum(p, 1e-30))[None] for p in probs])[0]
        consistent = [names[t][int(i)] for t, i in enumerate(best)]
        agree = taxonomy.is_path(argmax)
    return names, TaxonomyPrediction(levels, [names[t][i] for t, i in enumerate(argmax)], consistent, agree)
