"""Checkpoints: atomic writes, ``last`` / ``best``, everything needed to continue exactly.

A checkpoint holds the objective's weights (backbone and, for MoCo, projector / momentum encoder),
optimizer, scheduler, AMP scaler, EMA, epoch / step / position in the epoch, RNG states, the
resolved config and the arguments that rebuild the model. Only tensors and plain data are stored,
so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cast.loading import safe_torch_load

__all__ = ["save_checkpoint", "load_checkpoint", "find_resume", "rng_state", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename,
    so a run killed while saving leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    return safe_torch_load(path)


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """``None`` -> start fresh; ``"auto"`` -> ``run_dir/last.pt`` if present; else that path."""
    if not resume:
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return p


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:

    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
