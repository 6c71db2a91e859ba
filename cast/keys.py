"""Names of segments: the levels of the tree and the typed key of one segment.

Levels 1 (finest, up to 64 segments for the published models) to 4 (coarsest, up to 8) are the
tree's. Two more *display levels* sit around them: :attr:`Level.SUPERPIXEL` (the model's input
tokens, below level 1) and :attr:`Level.WHOLE` (the whole image, the tree's root, above level 4).

A :class:`SegmentKey` names one segment at one level. Its text form, used in ``hierarchy.json``,
in element attributes of the app and on the command line, is ``"L2-5"`` (segment 5 of level 2),
``"S-17"`` (superpixel 17) or ``"root"`` (the whole image). This module is the only place that
writes or reads that form.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Level", "SegmentKey", "ROOT", "TREE_LEVELS", "NUM_LEVELS"]

NUM_LEVELS = 4  # graph poolings, hence tree levels


class Level(IntEnum):
    """Display levels, finest to coarsest (their integer values order them)."""

    SUPERPIXEL = 0
    L1 = 1
    L2 = 2
    L3 = 3
    L4 = 4
    WHOLE = 5

    @property
    def is_tree(self) -> bool:
        """One of the tree's levels 1..4."""
        return 1 <= self.value <= NUM_LEVELS


TREE_LEVELS: tuple[Level, ...] = (Level.L1, Level.L2, Level.L3, Level.L4)


@dataclass(frozen=True, order=True)
class SegmentKey:
    """One segment: ``level`` (a :class:`Level`) and its ``id`` within that level (0 for the root)."""

    level: Level
    id: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", Level(int(self.level)))
        object.__setattr__(self, "id", int(self.id))
        if self.id < 0:
            raise ValueError(f"segment ids are >= 0, got {self.id}")
        if self.level == Level.WHOLE and self.id != 0:
            raise ValueError("the whole image has id 0")

    @classmethod
    def parse(cls, key: str | tuple[int, int] | SegmentKey) -> SegmentKey:
        """``"L2-5"``, ``"S-17"``, ``"root"``, ``(2, 5)`` or a key -> :class:`SegmentKey`.

        Raises:
            ValueError: anything else, with the accepted forms in the message.
        """
        if isinstance(key, SegmentKey):
            return key
        if isinstance(key, tuple):
            return cls(Level(int(key[0])), int(key[1]))
        text = str(key).strip()
        if text.lower() == "root":
            return ROOT
        try:
            head, _, tail = text.partition("-")
            if head.upper() == "S":
                return cls(Level.SUPERPIXEL, int(tail))
            if head.upper().startswith("L"):
                level = int(head[1:])
                if 1 <= level <= NUM_LEVELS:
                    return cls(Level(level), int(tail))
        except ValueError:
            pass
        raise ValueError(f"bad segment key {key!r}; expected like 'L2-5' (level 1-4), 'S-17' (superpixel) or 'root'")

    def __str__(self) -> str:
        if self.level == Level.WHOLE:
            return "root"
        if self.level == Level.SUPERPIXEL:
            return f"S-{self.id}"
        return f"L{int(self.level)}-{self.id}"

    def __repr__(self) -> str:
        return f"SegmentKey({str(self)!r})"

    @property
    def is_root(self) -> bool:
        return self.level == Level.WHOLE

    @property
    def is_superpixel(self) -> bool:
        return self.level == Level.SUPERPIXEL

    @property
    def is_node(self) -> bool:
        """A segment of the tree (levels 1..4), as opposed to the root or a superpixel."""
        return self.level.is_tree


ROOT = SegmentKey(Level.WHOLE, 0)
