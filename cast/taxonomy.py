"""Class taxonomies for hierarchical heads (H-CAST): levels fine -> coarse, each class's parent.

A :class:`Taxonomy` names the classes of every level and links each class to its parent one level
up, so that a tuple of per-level classes is either a *path* of the tree or not. It is what a
hierarchical model's predictions are read against: the names of each head's classes, the valid
paths, the *consistent path* (the valid path with the highest summed log-probability over the
levels), and the metrics (per-level top-1, full-path accuracy, tree-inconsistency error).

Files (``--taxonomy FILE``, ``cast.load_model(..., taxonomy=FILE)``) are JSON, in one of two forms:

- ours: ``{"levels": [{"name": "class", "classes": ["car", ...], "parents": [1, ...]}, ...,
  {"name": "group", "classes": ["vehicles", ...]}]}``: levels fine -> coarse; ``parents[i]`` is the
  index, in the next level's ``classes``, of class ``i``'s parent (the coarsest level has none);
- H-CAST's tree files: a list of valid ``[fine, (middle,) coarse]`` id tuples, 0-based, one per fine
  class (the official code's ``data/*_tree.json``); class names are then ``"<level> <id>"``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CastError, CheckpointFormatError

__all__ = ["Taxonomy", "TaxonomyError", "TaxonomyMismatchError", "load_taxonomy", "hierarchical_metrics"]

DEFAULT_LEVEL_NAMES = {2: ("class", "group"), 3: ("class", "family", "order")}


class TaxonomyError(CastError, ValueError):
    """A taxonomy file or object that is not a tree over the levels it names."""

    default_short = "not a taxonomy this library can read"


class TaxonomyMismatchError(CheckpointFormatError, TaxonomyError):
    """A taxonomy whose classes per level are not the model's (a load error and a taxonomy error)."""

    default_short = "the taxonomy does not fit the model"


@dataclass(frozen=True)
class Taxonomy:
    """Classes per level, fine -> coarse, and each class's parent in the next level."""

    level_names: tuple[str, ...]  # e.g. ("species", "family", "order")
    classes: tuple[tuple[str, ...], ...]  # class names of each level
    parents: tuple[tuple[int, ...], ...]  # per level but the coarsest: parent index of each class

    def __post_init__(self) -> None:
        n = len(self.classes)
        if n < 2:
            raise TaxonomyError(f"a taxonomy needs at least 2 levels, got {n}")
        if len(self.level_names) != n or len(self.parents) != n - 1:
            raise TaxonomyError(f"{n} levels of classes need {n} level names and {n - 1} parent lists, "
                                f"got {len(self.level_names)} and {len(self.parents)}")
        for level, (names, parents) in enumerate(zip(self.classes, self.parents)):
            if len(parents) != len(names):
                raise TaxonomyError(f"level {level} ({self.level_names[level]}): {len(names)} classes but "
                                    f"{len(parents)} parents")
            up = len(self.classes[level + 1])
            bad = [i for i, p in enumerate(parents) if not 0 <= p < up]
            if bad:
                raise TaxonomyError(f"level {level} ({self.level_names[level]}): class {bad[0]}'s parent "
                                    f"{parents[bad[0]]} is not a class of the next level (0..{up - 1})")
        for level in range(1, n):
            below = set(self.parents[level - 1])
            orphans = [i for i in range(len(self.classes[level])) if i not in below]
            if orphans:
                raise TaxonomyError(f"level {level} ({self.level_names[level]}): class {orphans[0]} "
                                    f"({self.classes[level][orphans[0]]!r}) has no child class")

    # -- shape ------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.classes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Classes per level, fine -> coarse (a hierarchical model's ``level_classes``)."""
        return tuple(len(c) for c in self.classes)

    def paths(self) -> np.ndarray:
        """``[n_fine, L]`` int array (read-only): every valid path, one per fine class (row i starts with i)."""
        return self._paths

    @functools.cached_property
    def _paths(self) -> np.ndarray:  # made once per taxonomy (cached_property bypasses the frozen __setattr__)
        cols = [np.arange(self.sizes[0])]
        for parents in self.parents:
            cols.append(np.asarray(parents, dtype=np.int64)[cols[-1]])
        paths = np.stack(cols, axis=1)
        paths.flags.writeable = False
        return paths

    def ancestors(self, fine: int) -> tuple[int, ...]:
        """The path of fine class ``fine``: its id at every level, fine -> coarse."""
        return tuple(int(v) for v in self._paths[fine])

    def is_path(self, ids: Sequence[int]) -> bool:
        """Whether a tuple of per-level class ids (fine -> coarse) is a path of the tree."""
        if len(ids) != self.num_levels:
            return False
        return all(self.parents[level][int(ids[level])] == int(ids[level + 1]) for level in range(self.num_levels - 1))

    def names_of(self, ids: Sequence[int]) -> tuple[str, ...]:
        return tuple(self.classes[level][int(i)] for level, i in enumerate(ids))

    # -- reading predictions ---------------------------------------------------------------------
    def consistent_path(self, log_probs: Sequence[Any]) -> np.ndarray:
        """The valid path with the highest summed log-probability over the levels.

        ``log_probs``: one ``[B, classes_l]`` array (or tensor) per level, fine -> coarse. Returns
        ``[B, L]`` class ids.
        """
        scores = self.path_scores(log_probs)
        return self.paths()[scores.argmax(axis=1)]

    def path_scores(self, log_probs: Sequence[Any]) -> np.ndarray:
        """``[B, n_fine]``: summed log-probability of each valid path (indexed by its fine class)."""
        if len(log_probs) != self.num_levels:
            raise TaxonomyError(f"{len(log_probs)} levels of predictions for a {self.num_levels}-level taxonomy")
        paths = self.paths()
        total = None
        for level, lp in enumerate(log_probs):
            lp = _numpy(lp)
            if lp.shape[-1] != self.sizes[level]:
                raise TaxonomyError(f"level {level} ({self.level_names[level]}): {lp.shape[-1]} scores for "
                                    f"{self.sizes[level]} classes")
            part = lp[..., paths[:, level]]
            total = part if total is None else total + part
        assert total is not None
        return total

    # -- files -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        levels: list[dict[str, Any]] = []
        for level, (name, classes) in enumerate(zip(self.level_names, self.classes)):
            entry: dict[str, Any] = {"name": name, "classes": list(classes)}
            if level < len(self.parents):
                entry["parents"] = list(self.parents[level])
            levels.append(entry)
        return {"levels": levels}

    @classmethod
    def from_dict(cls, d: Any, where: str = "taxonomy") -> Taxonomy:
        """Our form (a dict with ``levels``) or H-CAST's list of paths."""
        if isinstance(d, list):
            return cls.from_paths(d, where=where)
        if not isinstance(d, dict) or not isinstance(d.get("levels"), list):
            raise TaxonomyError(f"{where}: expected {{\"levels\": [...]}} or a list of [fine, ..., coarse] paths")
        try:
            levels = d["levels"]
            names = tuple(str(lv.get("name", f"level {i + 1}")) for i, lv in enumerate(levels))
            classes = tuple(tuple(str(c) for c in lv["classes"]) for lv in levels)
            parents = tuple(tuple(int(p) for p in lv["parents"]) for lv in levels[:-1])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TaxonomyError(f"{where}: every level needs 'classes', and all but the coarsest 'parents' ({e})") from None
        try:
            return cls(names, classes, parents)
        except TaxonomyError as e:
            raise TaxonomyError(f"{where}: {e}") from None

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]], level_names: Sequence[str] | None = None,
                   where: str = "taxonomy") -> Taxonomy:
        """From valid ``(fine, [middle,] coarse)`` id tuples (one per fine class, 0-based)."""
        try:
            rows = np.asarray(paths, dtype=np.int64)
        except (TypeError, ValueError):
            raise TaxonomyError(f"{where}: paths must be lists of integer class ids of equal length") from None
        if rows.ndim != 2 or rows.shape[1] < 2 or len(rows) == 0 or (rows < 0).any():
            raise TaxonomyError(f"{where}: expected non-negative [fine, ..., coarse] id lists of 2 or more levels")
        n_levels = rows.shape[1]
        names = tuple(level_names or DEFAULT_LEVEL_NAMES.get(n_levels, tuple(f"level {i + 1}" for i in range(n_levels))))
        sizes = [int(rows[:, level].max()) + 1 for level in range(n_levels)]
        parents: list[tuple[int, ...]] = []
        for level in range(n_levels - 1):
            up: dict[int, int] = {}
            for child, parent in zip(rows[:, level].tolist(), rows[:, level + 1].tolist()):
                if up.setdefault(child, parent) != parent:
                    raise TaxonomyError(f"{where}: not a tree: {names[level]} {child} has two parents "
                                        f"({up[child]} and {parent})")
            missing = [i for i in range(sizes[level]) if i not in up]
            if missing:
                raise TaxonomyError(f"{where}: {names[level]} {missing[0]} is on no path")
            parents.append(tuple(up[i] for i in range(sizes[level])))
        classes = tuple(tuple(f"{names[level]} {i}" for i in range(sizes[level])) for level in range(n_levels))
        try:
            return cls(names, classes, tuple(parents))
        except TaxonomyError as e:
            raise TaxonomyError(f"{where}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def load_taxonomy(source: str | os.PathLike[str] | Taxonomy | dict[str, Any] | list[Any]) -> Taxonomy:
    """A taxonomy from a JSON file (either form, see the module's doc), a dict or list, or as given."""
    if isinstance(source, Taxonomy):
        return source
    if isinstance(source, (dict, list)):
        return Taxonomy.from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise TaxonomyError(f"taxonomy file not found: {path}", short="taxonomy file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaxonomyError(f"{path.name}: not a JSON file ({e})") from None
    return Taxonomy.from_dict(data, where=path.name)


def hierarchical_metrics(predicted: np.ndarray, targets: np.ndarray, taxonomy: Taxonomy) -> dict[str, Any]:
    """H-CAST's metrics for ``[N, L]`` predicted and true class ids (fine -> coarse).

    Returns per-level top-1 (``top1`` list, fine -> coarse), ``fpa`` (full-path accuracy: every
    level right) and ``tice`` (tree-based inconsistency error: share of predicted tuples that are not
    a path of the taxonomy).
    """
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    if predicted.shape != targets.shape or predicted.ndim != 2 or predicted.shape[1] != taxonomy.num_levels:
        raise TaxonomyError(f"predictions {predicted.shape} and targets {targets.shape} must both be "
                            f"[N, {taxonomy.num_levels}]")
    n = max(len(predicted), 1)
    right = predicted == targets
    valid = np.ones(len(predicted), dtype=bool)
    for level, parents in enumerate(taxonomy.parents):
        valid &= np.asarray(parents, dtype=np.int64)[predicted[:, level]] == predicted[:, level + 1]
    return {
        "top1": [float(right[:, level].sum() / n) for level in range(taxonomy.num_levels)],
        "fpa": float(right.all(axis=1).sum() / n),
        "tice": float((~valid).sum() / n),
        "n": int(len(predicted)),
    }


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
