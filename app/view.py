"""One session's view of a segmented image: display-size label maps, pixel -> segment lookup, the
selected segment and what the panel says about it. Pure numpy, no Gradio.

Selection keys: ``"root"`` (the whole image), ``"L4-2"`` (segment 2 of level 4, as in
:mod:`cast.hierarchy`) and ``"S-17"`` (superpixel 17).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cast.hierarchy import Hierarchy, node_key, parse_node_key

from .service import Result

ROOT = "root"
WHOLE, SUPERPIXELS = 5, 0  # display levels beside the tree's 1..4
LEVEL_CHOICES: list[tuple[str, int]] = [
    ("whole image", WHOLE), ("8", 4), ("16", 3), ("32", 2), ("64", 1), ("superpixels", SUPERPIXELS),
]  # labels are the published models' segment counts per level


def nearest_resize(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` ids -> ``[h, w]`` (``size`` = (w, h)) by nearest-pixel lookup (ids never blend)."""
    w, h = size
    rows = (np.arange(h) * labels.shape[0]) // h
    cols = (np.arange(w) * labels.shape[1]) // w
    return labels[rows[:, None], cols[None, :]]


def display_maps(tree: Hierarchy, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Label maps at display size ``(w, h)``: levels 1..4, ``SUPERPIXELS`` (0) and ``WHOLE`` (5, all zero)."""
    maps = {lv: nearest_resize(m, size).astype(np.int32) for lv, m in enumerate(tree.label_maps, start=1)}
    maps[SUPERPIXELS] = nearest_resize(tree.superpixels, size).astype(np.int32)
    maps[WHOLE] = np.zeros((size[1], size[0]), np.int32)
    return maps


def key_level(key: str) -> int:
    if key == ROOT:
        return WHOLE
    if key.startswith("S-"):
        return SUPERPIXELS
    return parse_node_key(key)[0]


def key_for(level: int, segment: int) -> str:
    if level == WHOLE:
        return ROOT
    if level == SUPERPIXELS:
        return f"S-{segment}"
    return node_key(level, segment)


def path_keys(tree: Hierarchy, key: str) -> list[str]:
    """Keys from the root down to ``key`` (a superpixel's path goes through its level-1 segment)."""
    if key == ROOT:
        return [ROOT]
    tail: list[str] = []
    if key.startswith("S-"):
        sp = int(key[2:])
        tail = [key]
        key = node_key(1, int(tree.superpixel_to_level1[sp]))
    level, node_id = parse_node_key(key)
    nodes = tree.path_to_root(level, node_id)
    return [ROOT] + [n.key for n in reversed(nodes)] + tail


@dataclass
class SegmentInfo:
    """What the segment panel shows."""

    key: str
    level: int  # 0 superpixel, 1..4 tree levels, 5 whole image
    id: int
    area_fraction: float
    parent: str | None
    children: list[str]
    path: list[str]
    token_predictions: list[tuple[str, float]] | None  # the segment's own token through the head
    masked_predictions: list[tuple[str, float]] | None  # the segment alone (masked image), on demand
    bbox: tuple[int, int, int, int] | None = None
    concepts: list[int] | None = None  # nearest semantic prototype per concept level (HIRL models)


@dataclass
class View:
    """A session's state: the shared result plus this person's display maps and selection."""

    result: Result
    maps: dict[int, np.ndarray]
    selected: str | None = None
    baseline_maps: dict[int, np.ndarray] | None = None
    compare_point: tuple[int, int] | None = None  # last clicked pixel in the compare view
    session: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this session's overlay file
    cache: dict[str, Any] = field(default_factory=dict)  # drawing caches (colours, unselected overlay layers)

    @classmethod
    def of(cls, result: Result) -> View:
        h, w = result.photo.shape[:2]
        return cls(result=result, maps=display_maps(result.tree, (w, h)))

    @property
    def tree(self) -> Hierarchy:
        return self.result.tree

    @property
    def size(self) -> tuple[int, int]:
        """Display size (w, h)."""
        h, w = self.result.photo.shape[:2]
        return w, h

    def key_at(self, x: float, y: float, level: int) -> str:
        """Selection key of the segment under display pixel ``(x, y)`` at display level ``level``
        (coordinates outside the image are clamped to its border)."""
        w, h = self.size
        xi = min(max(int(x), 0), w - 1)
        yi = min(max(int(y), 0), h - 1)
        return key_for(level, int(self.maps[level][yi, xi]))

    def mask(self, key: str) -> np.ndarray:
        """``[h, w]`` bool mask of a selection at display size."""
        level = key_level(key)
        if level == WHOLE:
            return np.ones(self.maps[WHOLE].shape, bool)
        segment = int(key[2:]) if level == SUPERPIXELS else parse_node_key(key)[1]
        return self.maps[level] == segment

    def info(self, key: str) -> SegmentInfo:
        tree = self.tree
        if key == ROOT:
            tops = [n.key for n in tree.nodes_at(4)]
            preds = tree.level_predictions[3] if tree.level_predictions else None
            return SegmentInfo(ROOT, WHOLE, 0, 1.0, None, tops, [ROOT], preds, None)
        if key.startswith("S-"):
            sp = int(key[2:])
            if not 0 <= sp < len(tree.superpixel_to_level1):
                raise KeyError(f"no superpixel {sp}")
            area = float(np.count_nonzero(tree.superpixels == sp)) / tree.superpixels.size
            parent = node_key(1, int(tree.superpixel_to_level1[sp]))
            return SegmentInfo(key, SUPERPIXELS, sp, area, parent, [], path_keys(tree, key), None, None)
        level, node_id = parse_node_key(key)
        node = tree.node(level, node_id)
        w, h = tree.size
        parent = ROOT if node.parent is None else node_key(level + 1, node.parent)
        children = [node_key(level - 1, c) for c in node.children]
        return SegmentInfo(
            key, level, node_id, node.area / (w * h), parent, children, path_keys(tree, key),
            node.predictions, tree.segment_predictions.get(key), node.bbox, node.concepts,
        )
