"""CAST Explorer's web app (Gradio). Start it with ``python app.py``.

Modules: ``config`` (settings), ``service`` (models, segmentation, downloads; no Gradio), ``view``
(a session's display maps, selection and comparison; no Gradio), ``sessions`` (the memory budget
over all sessions; no Gradio), ``autosave`` (annotations saved after every edit; no Gradio),
``render`` (overlay, tree, panels),
``callbacks`` (the event handlers), ``ui`` (layout and event wiring). The app uses the model library
only through its public API (``cast.load_segmenter``, ``cast.Hierarchy``, ``cast.SegmentKey``).
"""

from __future__ import annotations

import logging
import threading

from .config import AppConfig, server_address
from .service import Explorer, example_files

__all__ = ["AppConfig", "Explorer", "create_app", "main"]


def create_app(cfg: AppConfig | None = None, explorer: Explorer | None = None):  # -> gr.Blocks
    """Build the Blocks app (queued) and the engine behind it; returns ``(demo, explorer)``."""
    import torch

    from .sessions import tune_malloc
    from .ui import build

    tune_malloc()  # memory freed by sessions and big photos goes back to the system (glibc)
    explorer = explorer or Explorer(cfg)
    cfg = explorer.cfg
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.precompute_examples:
        examples = example_files(cfg.examples_dir)
        threading.Thread(target=explorer.precompute, args=(examples,), name="precompute-examples", daemon=True).start()
    demo = build(explorer)
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.workers)
    return demo, explorer


def launch_kwargs(cfg: AppConfig) -> dict:
    """Settings of ``demo.launch``: no share links, only ``assets/`` besides Gradio's cache."""
    from .config import ASSETS
    from .ui import CSS, HEAD

    host, port = server_address()
    return dict(
        server_name=host, server_port=port, share=False, ssr_mode=False, css=CSS, head=HEAD, max_file_size=cfg.max_file_size,
        allowed_paths=[str(ASSETS)], show_error=True, footer_links=["api"],
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo, explorer = create_app(AppConfig.from_env())
    try:
        demo.launch(**launch_kwargs(explorer.cfg))
    finally:
        explorer.close()
