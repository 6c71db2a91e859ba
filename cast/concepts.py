"""Semantic hierarchy (HIRL-style concepts): per-level MLP heads and tree-structured prototypes.

A model trained with HIRL (``train`` package, ``hirl.enabled``) carries, beside its weights, a
``concepts.safetensors`` + ``concepts.json`` pair and a ``concepts/`` folder of thumbnails:

- level 1 (finest) ... L (coarsest) prototypes ``[M_l, D]`` (unit vectors in the embedding space
  of the backbone's final feature ``D``), and ``parents[l][k]`` = the level-(l+1) prototype that
  level-l prototype ``k`` belongs to (a tree: hierarchical k-means, each level clustering the
  previous level's centroids);
- one MLP head per level mapping a backbone feature into that level's space; a feature's score
  for prototype ``k`` at level ``l`` is ``cos(head_l(z), prototype_l[k])``;
- a few representative training images per prototype (thumbnails), so inference needs no data.

``ConceptHierarchy.path`` gives an image's concept path (the fine-to-coarse chain of prototypes
with the best summed score, one id per level) with per-level confidences (softmax over that
level's prototypes at the training temperature); ``nearest`` gives each feature's best prototype
per level independently (used for segments).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CheckpointFormatError, CheckpointMismatchError

__all__ = ["ConceptHead", "ConceptHierarchy", "ConceptStep", "load_concepts", "save_concepts",
           "CONCEPTS_CONFIG", "CONCEPTS_WEIGHTS", "THUMBNAILS_DIR"]

CONCEPTS_CONFIG = "concepts.json"
CONCEPTS_WEIGHTS = "concepts.safetensors"
THUMBNAILS_DIR = "concepts"
FORMAT = "cast-explorer-concepts"


def concept_key(level: int, prototype: int) -> str:
    """Text name of a prototype in ``concepts.json`` and thumbnail file names: ``"L2-7"``. (Concept
    levels are HIRL's, as many as trained; they are not the segment tree's levels.)"""
    return f"L{int(level)}-{int(prototype)}"


def parse_concept_key(text: str) -> tuple[int, int]:
    """``"L2-7"`` -> ``(2, 7)``."""
    try:
        level, prototype = text.removeprefix("L").split("-")
        return int(level), int(prototype)
    except ValueError:
        raise CheckpointFormatError(f"bad concept key {text!r} in {CONCEPTS_CONFIG}; expected like 'L2-7'") from None


class ConceptHead(nn.Module):
    """Linear - GELU - Linear, ``dim -> hidden -> dim`` (no batch statistics: works on one feature)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(z)))


@dataclass
class ConceptStep:
    """One level of a concept path."""

    level: int  # 1 (finest) .. L (coarsest)
    id: int  # prototype id at that level
    confidence: float  # softmax over the level's prototypes
    thumbnails: list[str] = field(default_factory=list)  # files of representative training images

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "id": self.id, "confidence": round(self.confidence, 6),
                "thumbnails": [os.path.basename(t) for t in self.thumbnails]}


class ConceptHierarchy(nn.Module):
    """Heads + prototypes + parent maps (see the module docstring).

    Args:
        dim: backbone feature width ``D``.
        num_prototypes: ``M_1 .. M_L`` (fine to coarse).
        hidden: hidden width of the heads.
        temperature: scale of the cosine scores (as in training).
    """

    def __init__(self, dim: int, num_prototypes: list[int] | tuple[int, ...], hidden: int = 0,
                 temperature: float = 0.2) -> None:
        super().__init__()
        self.dim = int(dim)
        self.num_prototypes = [int(m) for m in num_prototypes]
        self.hidden = int(hidden or dim)
        self.temperature = float(temperature)
        self.heads = nn.ModuleList([ConceptHead(self.dim, self.hidden) for _ in self.num_prototypes])
        for lv, m in enumerate(self.num_prototypes):
            self.register_buffer(f"prototypes_{lv}", torch.zeros(m, self.dim))
            self.register_buffer(f"parents_{lv}", torch.zeros(m, dtype=torch.long))  # last level: all 0 (root)
        self.thumbnails: dict[tuple[int, int], list[str]] = {}  # (level, id) -> files
        self.source = ""

    @property
    def num_levels(self) -> int:
        return len(self.num_prototypes)

    def prototypes(self, level: int) -> torch.Tensor:
        """``[M_level, D]`` unit prototypes of ``level`` (1-based)."""
        return getattr(self, f"prototypes_{level - 1}")

    def parents(self, level: int) -> torch.Tensor:
        """``[M_level]`` parent ids at ``level + 1`` (zeros at the top level)."""
        return getattr(self, f"parents_{level - 1}")

    def leaf_paths(self) -> torch.Tensor:
        """``[M_1, L]``: the prototype id at every level above each finest prototype."""
        ids = torch.arange(self.num_prototypes[0], device=self.prototypes(1).device)
        cols = [ids]
        for lv in range(1, self.num_levels):
            cols.append(self.parents(lv)[cols[-1]])
        return torch.stack(cols, 1)

    def scores(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Cosine scores ``[B, M_l]`` of features ``z`` ``[B, D]`` at every level."""
        return [F.normalize(head(z), dim=-1) @ F.normalize(self.prototypes(lv + 1), dim=-1).t()
                for lv, head in enumerate(self.heads)]

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` best prototype per level, levels chosen independently."""
        return torch.stack([s.argmax(-1) for s in self.scores(z)], 1)

    @torch.no_grad()
    def path(self, z: torch.Tensor) -> list[list[ConceptStep]]:
        """Per feature, the consistent fine-to-coarse path with the highest summed score."""
        scores = self.scores(z)
        paths = self.leaf_paths()  # [M_1, L]
        total = sum(s[:, paths[:, lv]] for lv, s in enumerate(scores))  # [B, M_1]
        best = paths[total.argmax(-1)]  # [B, L]
        out = []
        for b in range(z.shape[0]):
            steps = []
            for lv, s in enumerate(scores):
                k = int(best[b, lv])
                conf = float((s[b] / self.temperature).softmax(-1)[k])
                steps.append(ConceptStep(lv + 1, k, conf, list(self.thumbnails.get((lv + 1, k), []))))
            out.append(steps)
        return out

    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": 1, "dim": self.dim, "num_prototypes": self.num_prototypes,
                "hidden": self.hidden, "temperature": self.temperature,
                "thumbnails": {concept_key(lv, k): [os.path.basename(f) for f in files]
                               for (lv, k), files in self.thumbnails.items()}}


def save_concepts(concepts: ConceptHierarchy, directory: str | os.PathLike[str],
                  thumbnails: dict[tuple[int, int], list[bytes]] | None = None) -> Path:
    """Write ``concepts.json``, ``concepts.safetensors`` and JPEG ``thumbnails`` (``concepts/L1-3_0.jpg``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if thumbnails:
        (directory / THUMBNAILS_DIR).mkdir(exist_ok=True)
        concepts.thumbnails = {}
        for (lv, k), images in thumbnails.items():
            files = []
            for i, data in enumerate(images):
                f = directory / THUMBNAILS_DIR / f"{concept_key(lv, k)}_{i}.jpg"
                f.write_bytes(data)
                files.append(str(f))
            concepts.thumbnails[(lv, k)] = files
    save_file({k: v.detach().cpu().contiguous() for k, v in concepts.state_dict().items()}, str(directory / CONCEPTS_WEIGHTS))
    (directory / CONCEPTS_CONFIG).write_text(json.dumps(concepts.config(), indent=1) + "\n")
    return directory


def load_concepts(directory: str | os.PathLike[str]) -> ConceptHierarchy | None:
    """The concepts saved beside a model in ``directory``; None when the model has none.

    Raises:
        CheckpointFormatError / CheckpointMismatchError: the files exist but are unreadable or inconsistent.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_file, weights = directory / CONCEPTS_CONFIG, directory / CONCEPTS_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("format") != FORMAT:
            raise ValueError(f"format is {cfg.get('format')!r}, expected {FORMAT!r}")
        concepts = ConceptHierarchy(int(cfg["dim"]), list(cfg["num_prototypes"]), int(cfg["hidden"]), float(cfg["temperature"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointFormatError(f"{cfg_file}: unreadable concepts config ({e})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointFormatError(f"{weights}: unreadable ({e})") from None
    try:
        concepts.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{weights} does not fit {cfg_file}: {str(e).splitlines()[0]}") from None
    for text, files in dict(cfg.get("thumbnails", {})).items():
        paths = [str(directory / THUMBNAILS_DIR / os.path.basename(f)) for f in files]
        concepts.thumbnails[parse_concept_key(text)] = [p for p in paths if os.path.isfile(p)]
    concepts.source = str(directory)
    return concepts.eval()
