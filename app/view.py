"""One session's view of a segmented image: display-size label maps, pixel -> segment lookup, the
selected segment, what the panel says about it, and the CAST-vs-ViT comparison under a click.
Pure numpy, no Gradio.

Selections are :class:`cast.SegmentKey` values: the whole image (``ROOT``), a segment of the tree
(levels 1-4) or a superpixel; display levels are :class:`cast.Level` values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from cast.annotations import Annotations
from cast.hierarchy import Hierarchy
from cast.keys import ROOT, Level, SegmentKey

from .service import Result

__all__ = ["View", "SegmentInfo", "CompareSelection", "DrawCache", "LEVEL_CHOICES", "display_maps", "nearest_resize",
           "ROOT", "Level"]

LEVEL_CHOICES: list[tuple[str, int]] = [
    ("whole image", int(Level.WHOLE)), ("8", 4), ("16", 3), ("32", 2), ("64", 1), ("superpixels", int(Level.SUPERPIXEL)),
]  # labels are the published models' segment counts per level


def nearest_resize(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` ids -> ``[h, w]`` (``size`` = (w, h)) by nearest-pixel lookup (ids never blend)."""
    w, h = size
    rows = (np.arange(h) * labels.shape[0]) // h
    cols = (np.arange(w) * labels.shape[1]) // w
    return labels[rows[:, None], cols[None, :]]


def display_maps(tree: Hierarchy, size: tuple[int, int]) -> dict[Level, np.ndarray]:
    """Label maps at display size ``(w, h)`` for every display level (the whole image: all zero)."""
    maps = {Level(lv): nearest_resize(m, size).astype(np.int32) for lv, m in enumerate(tree.label_maps, start=1)}
    maps[Level.SUPERPIXEL] = nearest_resize(tree.superpixels, size).astype(np.int32)
    maps[Level.WHOLE] = np.zeros((size[1], size[0]), np.int32)
    return maps


@dataclass
class SegmentInfo:
    """What the segment panel shows."""

    key: SegmentKey
    area_fraction: float
    parent: SegmentKey | None
    children: list[SegmentKey]
    path: list[SegmentKey]
    token_predictions: list[tuple[str, float]] | None  # the segment's own token through the head
    masked_predictions: list[tuple[str, float]] | None  # the segment alone (masked image), on demand
    bbox: tuple[int, int, int, int] | None = None
    concepts: list[int] | None = None  # nearest semantic prototype per concept level (HIRL models)

    @property
    def level(self) -> Level:
        return self.key.level

    @property
    def id(self) -> int:
        return self.key.id


@dataclass
class CompareSelection:
    """The segment under one pixel in CAST's tree and in the ViT baseline's, and their overlap."""

    level: Level
    cast_key: SegmentKey
    vit_key: SegmentKey
    cast_mask: np.ndarray  # [h, w] bool at display size
    vit_mask: np.ndarray
    iou: float

    @property
    def cast_share(self) -> float:
        return float(self.cast_mask.mean())

    @property
    def vit_share(self) -> float:
        return float(self.vit_mask.mean())


@dataclass
class DrawCache:
    """A session's drawing caches (a few MB): segment colours and the unselected overlay layer."""

    colours: dict[Level, np.ndarray] | None = None
    baseline_colours: dict[Level, np.ndarray] | None = None
    base_style: tuple | None = None  # the style the layers below were drawn with
    base: np.ndarray | None = None  # [h, w, 3] overlay without the selection
    dimmed: np.ndarray | None = None  # the same, darkened


@dataclass
class View:
    """A session's state: the shared result plus this person's display maps and selection."""

    result: Result
    maps: dict[Level, np.ndarray]
    selected: SegmentKey | None = None
    baseline_maps: dict[Level, np.ndarray] | None = None
    compare_point: tuple[int, int] | None = None  # last clicked pixel in the compare view
    session: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this session's overlay file
    cache: DrawCache = field(default_factory=DrawCache)
    annotations: Annotations | None = None  # this person's regions (the tree itself is shared)
    picked: list[SegmentKey] = field(default_factory=list)  # segments picked in the Annotate tab
    active: str | None = None  # the region being edited

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

    def clamp(self, x: float, y: float) -> tuple[int, int]:
        """Display pixel ``(x, y)`` moved inside the image."""
        w, h = self.size
        return min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)

    def key_at(self, x: float, y: float, level: int) -> SegmentKey:
        """The segment under display pixel ``(x, y)`` at display level ``level`` (coordinates
        outside the image are clamped to its border)."""
        xi, yi = self.clamp(x, y)
        level = Level(int(level))
        return SegmentKey(level, int(self.maps[level][yi, xi]))

    def mask(self, key: SegmentKey) -> np.ndarray:
        """``[h, w]`` bool mask of a selection at display size."""
        if key.is_root:
            return np.ones(self.maps[Level.WHOLE].shape, bool)
        return self.maps[key.level] == key.id

    def info(self, key: SegmentKey) -> SegmentInfo:
        """The panel's facts about a selection.

        Raises:
            KeyError: the key names nothing in this tree.
        """
        tree = self.tree
        if not tree.has(key):
            raise KeyError(f"no segment {key} in this tree")
        if key.is_root:
            preds = tree.level_predictions[3] if tree.level_predictions else None
            return SegmentInfo(ROOT, 1.0, None, [n.key for n in tree.nodes_at(4)], [ROOT], preds, None)
        if key.is_superpixel:
            area = float(np.count_nonzero(tree.superpixels == key.id)) / tree.superpixels.size
            parent = SegmentKey(Level.L1, int(tree.superpixel_to_level1[key.id]))
            return SegmentInfo(key, area, parent, [], tree.path_keys(key), None, None)
        node = tree.node(key)
        w, h = tree.size
        children = [SegmentKey(Level(node.level - 1), c) for c in node.children]
        return SegmentInfo(
            key, node.area / (w * h), node.parent_key, children, tree.path_keys(key),
            node.predictions, tree.segment_predictions.get(key), node.bbox, node.concepts,
        )

    def needs_recognition(self) -> bool:
        """Whether the selected segment's masked-image recognition is still to be computed."""
        key = self.selected
        return bool(key is not None and key.is_node and self.tree.level_predictions is not None
                    and key not in self.tree.segment_predictions)

    # -- compare -------------------------------------------------------------------------
    def set_baseline(self, baseline: Hierarchy) -> None:
        """Show the ViT baseline's tree of the same photo beside CAST's."""
        self.baseline_maps = display_maps(baseline, self.size)
        self.compare_point = None

    def compare_at(self, level: int) -> CompareSelection | None:
        """The segments under the last compare click, at tree level ``level`` (clamped to 1..4)."""
        if self.compare_point is None or self.baseline_maps is None:
            return None
        lv = Level(min(max(int(level), 1), 4))
        x, y = self.compare_point
        cast_id, vit_id = int(self.maps[lv][y, x]), int(self.baseline_maps[lv][y, x])
        cast_mask, vit_mask = self.maps[lv] == cast_id, self.baseline_maps[lv] == vit_id
        iou = np.count_nonzero(cast_mask & vit_mask) / max(np.count_nonzero(cast_mask | vit_mask), 1)
        return CompareSelection(lv, SegmentKey(lv, cast_id), SegmentKey(lv, vit_id), cast_mask, vit_mask, float(iou))


# -- annotating ----------------------------------------------------------------------------


def annotations_of(view: View) -> Annotations:
    """The view's annotations (created empty on first use)."""
    if view.annotations is None:
        view.annotations = Annotations(view.tree)
    return view.annotations


def pick(view: View, key: SegmentKey, add: bool) -> None:
    """Pick a segment (``add``: add it to the picked ones, or drop it if it was picked)."""
    if not key.is_node:
        raise KeyError(f"{key} is not a segment of the tree: pick at levels 1-4")
    if not add:
        view.picked = [key]
    elif key in view.picked:
        view.picked = [k for k in view.picked if k != key]
    else:
        view.picked = [*view.picked, key]


def picked_mask(view: View) -> np.ndarray:
    """``[h, w]`` bool mask of the picked segments at display size."""
    out = np.zeros(view.maps[Level.WHOLE].shape, bool)
    for key in view.picked:
        out |= view.maps[key.level] == key.id
    return out


def region_mask(view: View, region_id: str) -> np.ndarray:
    """``[h, w]`` bool mask of a region at display size."""
    leaves = np.fromiter(annotations_of(view).leaves(region_id), np.int64)
    return np.isin(view.maps[Level.L1], leaves)


def label_suggestions(view: View, limit: int = 6) -> list[str]:
    """Labels to offer for the picked segments: the model's predictions for them (masked-image
    recognition first, then their own tokens), then the labels already used."""
    tree, out = view.tree, []
    for key in view.picked:
        masked = tree.segment_predictions.get(key) or []
        own = tree.node(key).predictions or []
        out += [lbl for lbl, _ in masked[:2]] + [lbl for lbl, _ in own[:2]]
    out += annotations_of(view).labels
    return list(dict.fromkeys(out))[:limit]


def picked_summary(view: View) -> str:
    if not view.picked:
        return "Click segments to pick them (shift-click adds more), type a label, press Enter."
    share = float(picked_mask(view).mean())
    keys = ", ".join(str(k) for k in view.picked[:8]) + (" …" if len(view.picked) > 8 else "")
    return f"**{len(view.picked)} picked** ({keys}) · {share:.1%} of the image"
