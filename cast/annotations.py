"""An annotation layer over a :class:`~cast.hierarchy.Hierarchy`: labelled regions made of tree nodes.

A **region** is a labelled union of segments of the tree, from any level (a segment and its
children, several siblings, pieces that do not touch), optionally *part of* another region (its
``parent``). Because the tree's levels nest, every region is exactly a set of level-1 segments,
which is how containment and overlap are checked and how masks are drawn.

Every change goes through :class:`Annotations` methods, which check the invariants and raise
:class:`AnnotationError` (nothing changes) when one would break:

- every node exists in the tree and a region is not empty;
- a part lies inside its whole (its level-1 segments are a subset of the parent's);
- regions with the same parent (or both without one) do not overlap, unless ``allow_overlap``;
- no region is part of itself, directly or through others.

Each change is recorded, so :meth:`Annotations.undo` / :meth:`Annotations.redo` step through
them. :meth:`Annotations.to_dict` / :meth:`Annotations.from_dict` are the ``"annotations"`` entry of
``hierarchy.json`` (schema version 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import CastError
from .hierarchy import Hierarchy
from .keys import Level, SegmentKey

__all__ = ["Region", "Annotations", "AnnotationError", "NodeLike", "read_annotations"]

NodeLike = str | tuple[int, int] | SegmentKey


class AnnotationError(CastError, ValueError):
    """An edit that would break an invariant of the annotation; nothing was changed."""

    default_short = "that edit is not possible"


@dataclass(frozen=True)
class Region:
    """One labelled region: a union of tree nodes, optionally part of another region."""

    id: str  # "R1", "R2", ... (never reused within one annotation)
    label: str
    nodes: frozenset[SegmentKey]  # tree segments (levels 1-4); none is inside another
    parent: str | None = None  # the region this one is part of

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "nodes": [str(k) for k in sorted(self.nodes)], "parent": self.parent}


@dataclass
class _State:
    regions: dict[str, Region] = field(default_factory=dict)
    next_id: int = 1


class Annotations:
    """The regions annotated on one tree, with their edit history.

    Args:
        tree: the hierarchy the regions refer to (node keys are checked against it).
        allow_overlap: let regions with the same parent overlap (e.g. occluded parts).
    """

    def __init__(self, tree: Hierarchy, allow_overlap: bool = False) -> None:
        self.tree = tree
        self.allow_overlap = allow_overlap
        self._state = _State()
        self._undo: list[tuple[str, _State]] = []  # (what was done, the state before it)
        self._redo: list[tuple[str, _State]] = []
        self._leaves_cache: dict[SegmentKey, frozenset[int]] = {}

    # -- reading ---------------------------------------------------------------------------
    @property
    def regions(self) -> dict[str, Region]:
        """The regions by id, in creation order (a copy: change them through the methods)."""
        return dict(self._state.regions)

    def __len__(self) -> int:
        return len(self._state.regions)

    def __getitem__(self, region_id: str) -> Region:
        try:
            return self._state.regions[region_id]
        except KeyError:
            raise AnnotationError(f"no region {region_id!r}", short="no such region") from None

    def leaves(self, region: str | Region | Iterable[NodeLike]) -> frozenset[int]:
        """The level-1 segment ids a region (or a set of nodes) covers."""
        nodes = self[region].nodes if isinstance(region, str) else region.nodes if isinstance(region, Region) else region
        out: set[int] = set()
        for key in nodes:
            out |= self._node_leaves(SegmentKey.parse(key))
        return frozenset(out)

    def mask(self, region_id: str) -> np.ndarray:
        """``[H, W]`` bool mask of a region at the tree's original resolution."""
        return np.isin(self.tree.label_map(1), np.fromiter(self.leaves(region_id), np.int64))

    def children(self, region_id: str | None) -> list[Region]:
        """The regions directly part of ``region_id`` (None: the top-level regions)."""
        return [r for r in self._state.regions.values() if r.parent == region_id]

    def depth(self, region_id: str) -> int:
        """0 for a top-level region, 1 for its parts, ..."""
        d, r = 0, self[region_id]
        while r.parent is not None:
            d, r = d + 1, self[r.parent]
        return d

    def containing(self, nodes: Iterable[NodeLike], exclude: str | None = None) -> Region | None:
        """The smallest region whose area holds all of ``nodes`` (None when none does)."""
        want = self.leaves(nodes)
        best = None
        for r in self._state.regions.values():
            if r.id == exclude:
                continue
            have = self.leaves(r)
            if want <= have and (best is None or len(have) < len(self.leaves(best))):
                best = r
        return best

    @property
    def labels(self) -> list[str]:
        """The labels in use, in first-use order."""
        return list(dict.fromkeys(r.label for r in self._state.regions.values()))

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- editing ---------------------------------------------------------------------------
    def create(self, nodes: Iterable[NodeLike], label: str, parent: str | None | type[Ellipsis] = ...) -> str:
        """A new region of ``nodes`` labelled ``label``; returns its id. ``parent``: the region
        it is part of; by default the smallest region that contains it (None: a top-level region).
        Regions under the same parent that lie inside the new one become its parts (a whole
        drawn after its parts adopts them)."""
        keys = self._normalise(nodes)
        label = self._label(label)
        if parent is ...:
            holder = self.containing(keys)
            parent = holder.id if holder is not None else None
        state = self._copy()
        rid = f"R{state.next_id}"
        state.next_id += 1
        mine = self.leaves(keys)
        for other in list(state.regions.values()):
            if other.parent == parent and self.leaves(other) < mine:
                state.regions[other.id] = replace(other, parent=rid)
        state.regions[rid] = Region(rid, label, keys, parent)  # type: ignore[arg-type]
        self._commit(f"create {rid} ({label})", state)
        return rid

    def add_nodes(self, region_id: str, nodes: Iterable[NodeLike]) -> None:
        """Merge: the region also covers ``nodes``."""
        region = self[region_id]
        self._update(replace(region, nodes=self._normalise([*region.nodes, *nodes])), f"extend {region_id}")

    def remove_nodes(self, region_id: str, nodes: Iterable[NodeLike]) -> None:
        """Split: the region no longer covers ``nodes`` (a node of the region that contains one
        of them is replaced by its children, down to the removed ones)."""
        region = self[region_id]
        remove = self.leaves(nodes)
        if not remove & self.leaves(region):
            raise AnnotationError(f"{region_id} does not cover {', '.join(map(str, nodes))}",
                                  short="the region does not cover that segment")
        kept: list[SegmentKey] = []
        for key in region.nodes:
            kept += self._without(key, remove)
        if not kept:
            raise AnnotationError(f"removing these would leave {region_id} empty; delete it instead",
                                  short="the region would be empty")
        self._update(replace(region, nodes=self._normalise(kept)), f"shrink {region_id}")

    def relabel(self, region_id: str, label: str) -> None:
        self._update(replace(self[region_id], label=self._label(label)), f"relabel {region_id}")

    def set_parent(self, region_id: str, parent: str | None) -> None:
        """Make ``region_id`` part of ``parent`` (None: a top-level region)."""
        if parent is not None:
            self[parent]
        self._update(replace(self[region_id], parent=parent), f"set parent of {region_id}")

    def delete(self, region_id: str) -> None:
        """Remove a region; its parts become parts of its parent."""
        region = self[region_id]
        state = self._copy()
        del state.regions[region_id]
        for rid, r in state.regions.items():
            if r.parent == region_id:
                state.regions[rid] = replace(r, parent=region.parent)
        self._commit(f"delete {region_id}", state)

    def undo(self) -> str:
        """Revert the last change; returns what it was."""
        if not self._undo:
            raise AnnotationError("nothing to undo", short="nothing to undo")
        what, before = self._undo.pop()
        self._redo.append((what, self._state))
        self._state = before
        return what

    def redo(self) -> str:
        """Repeat the last undone change; returns what it was."""
        if not self._redo:
            raise AnnotationError("nothing to redo", short="nothing to redo")
        what, after = self._redo.pop()
        self._undo.append((what, self._state))
        self._state = after
        return what

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"allow_overlap": self.allow_overlap, "next_id": self._state.next_id,
                "regions": [r.to_dict() for r in self._state.regions.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], tree: Hierarchy) -> Annotations:
        """Annotations read from ``hierarchy.json``'s ``"annotations"`` entry, checked against ``tree``.

        Raises:
            AnnotationError: a node the tree does not have, or an invariant that does not hold.
        """
        ann = cls(tree, allow_overlap=bool(d.get("allow_overlap", False)))
        state = _State()
        try:
            for r in d.get("regions", []):
                rid = str(r["id"])
                state.regions[rid] = Region(rid, ann._label(str(r["label"])), ann._normalise(r["nodes"]),
                                            None if r.get("parent") is None else str(r["parent"]))
            numbers = [int(rid[1:]) for rid in state.regions if rid[1:].isdigit()]
            state.next_id = max([int(d.get("next_id", 1)), *(n + 1 for n in numbers)])
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(f"unreadable annotations ({e})", short="unreadable annotations") from None
        ann._check(state)
        ann._state = state
        return ann

    # -- internals -------------------------------------------------------------------------
    def _node_leaves(self, key: SegmentKey) -> frozenset[int]:
        hit = self._leaves_cache.get(key)
        if hit is None:
            node = self.tree.node(key)
            hit = frozenset([node.id]) if node.level == 1 else frozenset().union(
                *(self._node_leaves(SegmentKey(Level(node.level - 1), c)) for c in node.children))
            self._leaves_cache[key] = hit
        return hit

    def _normalise(self, nodes: Iterable[NodeLike]) -> frozenset[SegmentKey]:
        """Parsed, existing tree nodes, without those inside another node of the set."""
        keys = set()
        for n in nodes:
            try:
                key = SegmentKey.parse(n)
                self.tree.node(key)
            except (KeyError, ValueError) as e:
                raise AnnotationError(f"{n!r} is not a segment of this tree ({e})", short="not a segment of this tree") from None
            keys.add(key)
        if not keys:
            raise AnnotationError("a region needs at least one segment", short="select a segment first")
        leaves = {k: self._node_leaves(k) for k in keys}
        inside = set()
        for k in keys:  # drop nodes that another node of the set already covers (keep the coarser one)
            for o in keys:
                if o != k and (leaves[k] < leaves[o] or (leaves[k] == leaves[o] and o.level > k.level)):
                    inside.add(k)
        return frozenset(keys - inside)

    def _without(self, key: SegmentKey, remove: frozenset[int]) -> list[SegmentKey]:
        """``key`` minus the level-1 segments in ``remove``, as tree nodes."""
        leaves = self._node_leaves(key)
        if not leaves & remove:
            return [key]
        if leaves <= remove:
            return []
        node = self.tree.node(key)
        out: list[SegmentKey] = []
        for c in node.children:
            out += self._without(SegmentKey(Level(node.level - 1), c), remove)
        return out

    @staticmethod
    def _label(label: str) -> str:
        label = str(label).strip()
        if not label:
            raise AnnotationError("a region needs a label", short="type a label first")
        return label

    def _copy(self) -> _State:
        return _State(dict(self._state.regions), self._state.next_id)

    def _update(self, region: Region, what: str) -> None:
        state = self._copy()
        state.regions[region.id] = region
        self._commit(what, state)

    def _commit(self, what: str, state: _State) -> None:
        self._check(state)
        self._undo.append((what, self._state))
        self._redo.clear()
        self._state = state

    def _check(self, state: _State) -> None:
        leaves = {rid: self.leaves(r) for rid, r in state.regions.items()}
        for r in state.regions.values():
            seen, p = {r.id}, r.parent
            while p is not None:
                if p not in state.regions:
                    raise AnnotationError(f"{r.id} is part of {p}, which does not exist", short="no such parent region")
                if p in seen:
                    raise AnnotationError(f"{r.id} would be part of itself (through {p})", short="a region cannot be part of itself")
                seen.add(p)
                p = state.regions[p].parent
            if r.parent is not None and not leaves[r.id] <= leaves[r.parent]:
                raise AnnotationError(f"{r.id} ({r.label}) is not inside {r.parent} ({state.regions[r.parent].label}): "
                                      "a part must lie inside its whole", short="a part must lie inside its whole")
        if self.allow_overlap:
            return
        by_parent: dict[str | None, list[str]] = {}
        for r in state.regions.values():
            by_parent.setdefault(r.parent, []).append(r.id)
        for siblings in by_parent.values():
            for i, a in enumerate(siblings):
                for b in siblings[i + 1:]:
                    if leaves[a] & leaves[b]:
                        ra, rb = state.regions[a], state.regions[b]
                        raise AnnotationError(f"{a} ({ra.label}) and {b} ({rb.label}) would overlap; regions with the same "
                                              "parent may not (allow_overlap=True permits it)", short="regions would overlap")


def read_annotations(d: dict[str, Any], tree: Hierarchy) -> Annotations | None:
    """The annotations of a ``hierarchy.json`` dict for ``tree`` (None for files without any,
    including those of schema version 1), after checking that the file describes this tree.

    Raises:
        AnnotationError: the file is not a CAST hierarchy, or it describes another tree.
    """
    from .hierarchy import SCHEMA_NAME

    if not isinstance(d, dict) or d.get("schema") != SCHEMA_NAME:
        raise AnnotationError("not a CAST Explorer hierarchy.json (no \"schema\": \"cast-hierarchy\")",
                              short="not a hierarchy.json")
    mine = [[int(v) for v in p] for p in tree.parents]
    if [lv.get("num_segments") for lv in d.get("levels", [])] != tree.num_segments or d.get("parents") != mine:
        raise AnnotationError("this hierarchy.json describes another tree (another photo or model); segment the same "
                              "photo with the same model first", short="the file belongs to another photo or model")
    entry = d.get("annotations")
    return None if entry is None else Annotations.from_dict(entry, tree)
