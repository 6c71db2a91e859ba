"""Helpers of the app tests: settings for a test app, concept files, a free port."""

from __future__ import annotations

import socket
from pathlib import Path

from PIL import Image

from app.config import AppConfig
from tests.helpers import encoded

ABSENT_MODEL = "cast_base.mocov3_in1k"  # never put in the test Hub cache: stands for "the Hub is unreachable"


def add_concepts(folder: Path, dim: int = 48, counts: tuple[int, ...] = (6, 3, 2)) -> None:
    """Give a model folder a (random) HIRL concept hierarchy with thumbnails, as export writes it."""
    import torch

    from cast.concepts import ConceptHierarchy, save_concepts

    torch.manual_seed(0)
    concepts = ConceptHierarchy(dim, list(counts), hidden=32)
    for lv, m in enumerate(counts):
        getattr(concepts, f"prototypes_{lv}").copy_(torch.nn.functional.normalize(torch.randn(m, dim), dim=1))
        if lv + 1 < len(counts):
            getattr(concepts, f"parents_{lv}").copy_(torch.arange(m) % counts[lv + 1])
    thumbs = {(lv + 1, k): [encoded(Image.new("RGB", (16, 16), (40 * k, 80, 120)), "JPEG")]
              for lv, m in enumerate(counts) for k in range(m)}
    save_concepts(concepts, folder, thumbs)


def app_config(tmp: Path, models_dir: Path, **overrides) -> AppConfig:
    cfg = AppConfig(default_model="bundled", models_dir=models_dir, precompute_examples=False, temp_dir=tmp,
                    max_models=3, threads=0, autosave_dir=tmp / "autosave")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
