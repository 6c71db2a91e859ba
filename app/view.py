"""One session's view of a segmented image: display-size label maps, pixel -> segment lookup, the
selected segment, what the panel says about it, and the CAST-vs-ViT comparison under a click.
Pure numpy, no Gradio.

Selections are :class:`cast.SegmentKey` values: the whole image (``ROOT``), a segment of the tree
(levels 1-4) or a superpixel; display levels are :class:`cast.Level` values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cast.annotations import Annotations
from cast.hierarchy import Hierarchy
from cast.keys import ROOT, Level, SegmentKey

from .service import DisplayMaps, Result, display_maps

__all__ = ["View", "SegmentInfo", "CompareSelection", "DrawCache", "LEVEL_CHOICES", "display_maps", "nearest_resize", "EXPIRED",
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
    # hierarchical models (H-CAST): the segment's own token through the head of its level, and that level's name
    taxonomy_predictions: list[tuple[str, float]] | None = None
    taxonomy_level: str | None = None

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

    @property
    def nbytes(self) -> int:
        arrays = [self.base, *(self.colours or {}).values(), *(self.baseline_colours or {}).values()]
        return int(sum(a.nbytes for a in arrays if a is not None))


EXPIRED = "This photo's session expired; segment it again."


@dataclass
class View:
    """A session's state: the shared result (with its display maps) plus this person's selection,
    drawing caches and annotations. Registered with :class:`app.sessions.SessionRegistry`, which
    may :meth:`release` it under memory pressure; a released view is ``expired``."""

    result: Result
    maps: DisplayMaps  # the result's display maps (shared, read-only)
    selected: SegmentKey | None = None
    baseline_maps: DisplayMaps | None = None
    compare_point: tuple[int, int] | None = None  # last clicked pixel in the compare view
    session: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this session's overlay file
    cache: DrawCache = field(default_factory=DrawCache)
    annotations: Annotations | None = None  # this person's regions (the tree itself is shared)
    picked: list[SegmentKey] = field(default_factory=list)  # segments picked in the Annotate tab
    active: str | None = None  # the region being edited
    autosave: Path | None = None  # where this person's annotations of this photo are saved (app.autosave)
    expired: bool = False  # released for the memory budget: segment again
    page: str | None = None  # the Gradio session (browser tab) showing this view

    @classmethod
    def of(cls, result: Result, page: str | None = None) -> View:
        assert result.maps is not None
        return cls(result=result, maps=result.maps, page=page)

    @property
    def own_nbytes(self) -> int:
        """Memory this view holds besides its (shared) result, in bytes."""
        baseline = self.baseline_maps.nbytes if self.baseline_maps is not None else 0
        return int(self.cache.nbytes + baseline)

    def drop_caches(self) -> None:
        """Free the drawing caches (made again on the next event, a few ms): for idle sessions."""
        self.cache.base, self.cache.base_style = None, None
        self.maps.drop_caches()  # shared with other sessions on the same photo: they make them again if needed
        if self.baseline_maps is not None:
            self.baseline_maps.drop_caches()

    def release(self) -> None:
        """Drop everything heavy (the result, maps, caches, annotations: they were autosaved) and
        mark the view expired; only ``session`` and ``autosave`` stay."""
        self.expired = True
        self.result = None  # type: ignore[assignment]
        self.maps, self.baseline_maps, self.cache = DisplayMaps.empty(), None, DrawCache()
        self.annotations, self.picked, self.active, self.selected = None, [], None, None

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
            if tree.taxonomy is not None:  # the finest head's answer for the whole image
                fine = tree.taxonomy.levels[0]
                return SegmentInfo(ROOT, 1.0, None, [n.key for n in tree.nodes_at(4)], [ROOT], None, None,
                                   taxonomy_predictions=fine.predictions, taxonomy_level=fine.name)
            return SegmentInfo(ROOT, 1.0, None, [n.key for n in tree.nodes_at(4)], [ROOT], preds, None)
        if key.is_superpixel:
            w, h = tree.size
            area = float(tree.maps.superpixel_areas[key.id]) / (w * h)
            parent = SegmentKey(Level.L1, int(tree.superpixel_to_level1[key.id]))
            return SegmentInfo(key, area, parent, [], tree.path_keys(key), None, None)
        node = tree.node(key)
        w, h = tree.size
        children = [SegmentKey(Level(node.level - 1), c) for c in node.children]
        answered = tree.taxonomy.level_at(node.level) if tree.taxonomy is not None else None
        return SegmentInfo(
            key, node.area / (w * h), node.parent_key, children, tree.path_keys(key),
            node.predictions, tree.segment_predictions.get(key), node.bbox, node.concepts,
            node.taxonomy_predictions, answered.name if answered is not None else None,
        )

    def needs_recognition(self) -> bool:
        """Whether the selected segment's masked-image recognition is still to be computed."""
        key = self.selected
        return bool(key is not None and key.is_node and self.has_head and key not in self.tree.segment_predictions)

    @property
    def has_head(self) -> bool:
        """Whether the model classifies (a flat head or taxonomy heads)."""
        return self.tree.level_predictions is not None or self.tree.taxonomy is not None

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


def region_leaves(view: View, region_id: str) -> np.ndarray:
    """The level-1 segment ids a region covers, ``[k]`` int64."""
    return np.fromiter(annotations_of(view).leaves(region_id), np.int64)


def region_mask(view: View, region_id: str) -> np.ndarray:
    """``[h, w]`` bool mask of a region at display size (a lookup table over the level-1 map)."""
    table = np.zeros(view.tree.num_segments[0], bool)
    table[region_leaves(view, region_id)] = True
    return table[view.maps[Level.L1]]


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
