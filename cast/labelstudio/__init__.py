"""A Label Studio ML backend serving CAST: pre-annotations (the part-whole tree as brush regions
with part-of relations) and smart-tool answers at the granularity the annotator chooses.

    python -m cast serve-labelstudio --model bundled --port 9090     # then, in Label Studio:
    # Settings -> Model -> Connect model -> http://127.0.0.1:9090 (interactive preannotations on)
    python -m cast labelstudio-config > config.xml                   # a labeling config using all of it

From Python: :func:`serve` (blocking) or :func:`create_server` (a server to run in a thread). The
core library never imports this package; it needs nothing beyond it (Python's own HTTP server).
Guide: ``docs/labelstudio-backend.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .backend import BadRequest, LabelStudioBackend, TreeCache
from .config import ProjectConfig, UnsupportedConfig, labeling_config, read_config
from .media import FetchError, FetchSettings, ImageFetcher
from .server import BackendServer, make_server

__all__ = [
    "serve", "create_server", "LabelStudioBackend", "BackendServer", "FetchSettings", "ImageFetcher", "FetchError",
    "UnsupportedConfig", "BadRequest", "ProjectConfig", "TreeCache", "labeling_config", "read_config", "make_server",
    "fetch_settings_from_env",
]


def fetch_settings_from_env(**overrides: object) -> FetchSettings:
    """Image fetching settings from ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY`` and
    ``CAST_LS_ALLOWED_HOSTS`` (comma list), with ``overrides`` (None values ignored) on top."""
    env = {
        "label_studio_url": os.environ.get("LABEL_STUDIO_URL") or None,
        "api_key": os.environ.get("LABEL_STUDIO_API_KEY") or None,
        "allowed_hosts": tuple(h.strip() for h in os.environ.get("CAST_LS_ALLOWED_HOSTS", "").split(",") if h.strip()),
    }
    env.update({k: v for k, v in overrides.items() if v is not None})
    return FetchSettings(**env)  # type: ignore[arg-type]


def create_server(model: str = "bundled", host: str = "127.0.0.1", port: int = 9090, levels: Sequence[int] = (1, 2, 3, 4),
                  basic_auth: tuple[str, str] | None = None, fetch: FetchSettings | None = None, cache_size: int = 32,
                  device: str | None = None, refine: bool = True, model_version: str | None = None,
                  taxonomy: str | None = None) -> BackendServer:
    """Load ``model`` (any source :func:`cast.load_model` takes; ``taxonomy``: a taxonomy file for an
    official H-CAST checkpoint) and return its backend server, not yet serving (``serve_forever()`` or
    ``serve_in_thread()``; ``port=0`` picks a free port). ``model_version`` defaults to the model's
    name as given (a folder's name for a folder)."""
    from ..predictor import load_segmenter

    segmenter = load_segmenter(model, device=device, refine=refine, taxonomy=taxonomy)
    version = model_version or (Path(model).name if os.path.exists(model) else model)
    backend = LabelStudioBackend(segmenter, version, ImageFetcher(fetch or fetch_settings_from_env()), levels, cache_size)
    return make_server(backend, host, port, basic_auth)


def serve(model: str = "bundled", host: str = "127.0.0.1", port: int = 9090, **kwargs: object) -> None:
    """Serve ``model`` to Label Studio until interrupted (see :func:`create_server` for the options)."""
    server = create_server(model, host, port, **kwargs)  # type: ignore[arg-type]
    try:
        server.serve_forever()
    finally:
        server.server_close()
