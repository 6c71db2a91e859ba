"""App settings: one dataclass, every field overridable by an environment variable (for Spaces)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from cast.weights import REPO_ROOT

ASSETS = REPO_ROOT / "assets"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _cache_home() -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache``: kept across restarts of the app."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


@dataclass
class AppConfig:
    """What the app serves and how much it takes on. ``AppConfig.from_env()`` reads ``CAST_APP_*``."""

    default_model: str = "cast_small.deit_in1k"  # the bundled model serves until this one is ready (loaded in the background)
    startup_wait: float = 1.0  # seconds the start waits for a default that is not here yet (it goes on loading after)
    models_dir: Path = REPO_ROOT / "models"  # own-format model folders listed in the selector
    examples_dir: Path = ASSETS / "examples"  # example images, precomputed at start
    max_models: int = 2  # loaded models kept in memory (least recently used dropped)
    max_results: int = 32  # segmented images kept for instant re-display (examples, repeated uploads)
    max_result_mb: int = 256  # ... holding at most this much memory in all (display maps, photo, working-size tree)
    session_memory_mb: int = 1024  # all sessions' state together (least recently used released beyond it)
    disk_cache_mb: int = 4096  # result folders on disk (label maps, downloads; least recently used removed)
    max_file_size: str = "20mb"  # uploads above this are refused by the client and server
    queue_size: int = 32  # requests waiting beyond this get Gradio's "busy" message
    workers: int = 2  # segmentations run at once (one per core on a 2-vCPU Space)
    session_ttl: int = 30 * 60  # seconds a session's tree is kept after its last update
    autosave_dir: Path = field(default_factory=lambda: _cache_home() / "cast-explorer" / "autosave")  # annotations saved after every edit
    autosave_max_mb: int = 256  # cap on the autosave folder (oldest files removed first)
    autosave_ttl: int = 7 * 24 * 3600  # seconds an autosave file is kept after its last save
    display_size: int = 768  # longest side of the overlay image, pixels
    threads: int = 0  # torch threads (0: leave torch's default)
    device: str = "auto"  # where models run: "auto" (CUDA on ZeroGPU Spaces or when a GPU is present, else CPU), "cpu", "cuda"
    precompute_examples: bool = True  # segment the examples with the default model at start
    temp_dir: Path | None = None  # where exports are written (default: a fresh temporary folder)
    extra_models: list[str] = field(default_factory=list)  # more sources to list (paths or Hub repo ids)

    @classmethod
    def from_env(cls) -> AppConfig:
        cfg = cls()
        for f in fields(cls):
            raw = os.environ.get(f"CAST_APP_{f.name.upper()}")
            if raw is None:
                continue
            current = getattr(cfg, f.name)
            if isinstance(current, bool):
                value: object = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(current, float):
                value = float(raw)
            elif isinstance(current, int):
                value = int(raw)
            elif f.name in ("models_dir", "examples_dir", "temp_dir", "autosave_dir"):
                value = Path(raw)
            elif f.name == "extra_models":
                value = [s for s in raw.split(",") if s.strip()]
            else:
                value = raw
            setattr(cfg, f.name, value)
        return cfg


def server_address() -> tuple[str, int]:
    """Host and port from Gradio's own variables (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``)."""
    return _env("GRADIO_SERVER_NAME", "127.0.0.1"), int(_env("GRADIO_SERVER_PORT", "7860"))


def model_device(setting: str) -> str:
    """The torch device of the app's models for the ``device`` setting."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if os.environ.get("SPACES_ZERO_GPU") or torch.cuda.is_available() else "cpu"
