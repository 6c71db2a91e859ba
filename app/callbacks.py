"""The app's callbacks: glue between Gradio events and the engine (:class:`~app.service.Explorer`),
the session's view model (:class:`~app.view.View`) and the drawing code (:mod:`app.render`).

Each callback converts Gradio's values, calls one of those, and turns library errors into
``gr.Error`` messages (their text comes from the error types: ``str(e)`` and ``e.short``). The
layout and the event wiring are in :mod:`app.ui`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from typing import Any

import gradio as gr

from cast import BUNDLED, CastError, CastLoadError, ImageReadError, SegmentKey

from .render import (
    OverlayStyle,
    compare_images,
    concepts_html,
    encode_png,
    icicle_html,
    level_predictions_html,
    panel_html,
    view_colours,
    view_overlay,
)
from .service import Explorer, Result
from .view import EXPIRED, View

__all__ = ["Callbacks", "SEGMENT_OUTPUTS", "gpu", "live_view", "expired_error"]

log = logging.getLogger("cast_explorer")

SEGMENT_OUTPUTS = 11  # view, overlay, tree, panel, level predictions, 3 downloads, JSON, status, concepts

try:  # ZeroGPU Spaces: run the model calls on a lent GPU; inert elsewhere
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - the usual case

    def gpu(fn: Any) -> Any:
        return fn


TIMINGS = os.environ.get("CAST_APP_TIMINGS", "") not in ("", "0")  # log each callback's server time


def timed(fn: Any) -> Any:
    """Log ``timing <callback> <ms>`` when ``CAST_APP_TIMINGS=1`` (read by benchmarks/app_latency.py)."""
    if not TIMINGS:
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.info("timing %s %.2f", fn.__name__, (time.perf_counter() - t0) * 1000)

    return wrapper


# The model calls: module-level functions (the GPU decorator's rule), nothing else inside.
@gpu
def run_segment(explorer: Explorer, image: str, model: str) -> Result:
    return explorer.segment(image, model)


@gpu
def run_recognise(explorer: Explorer, result: Result, key: SegmentKey) -> None:
    explorer.recognise(result, key)


@gpu
def run_compare(explorer: Explorer, result: Result) -> Any:
    return explorer.compare(result)


def user_error(e: CastError) -> gr.Error:
    """A library error as the message people see."""
    if isinstance(e, ImageReadError):
        return gr.Error(str(e), title="Not an image we can read")
    if isinstance(e, CastLoadError):
        return gr.Error(str(e), title="Model not available")
    return gr.Error(str(e), title=e.short)


def no_image() -> gr.Error:
    return gr.Error("The session has expired or no image is segmented yet: segment a photo first.", title="No image")


def expired_error() -> gr.Error:
    return gr.Error(EXPIRED, title="Session expired")


def live_view(explorer: Explorer, view: View | None, missing: Any = no_image) -> View:
    """The session's view, marked as used now; a clear message when there is none or it expired."""
    if view is None:
        raise missing()
    if view.expired:
        raise expired_error()
    explorer.sessions.touch(view)
    return view


class Callbacks:
    """Every event handler of the page; ``controls`` are (level, opacity, boundaries, dim, equal widths)."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer
        self.session_dir = explorer.root / "sessions"
        self.session_dir.mkdir(exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------
    def draw(self, view: View, level: int, opacity: float, bounds: bool, dim: bool, equal: bool) -> tuple[str, str]:
        """The overlay (written as this session's ``overlay.png``) and the tree."""
        image = view_overlay(view, OverlayStyle(int(level), float(opacity), bool(bounds), bool(dim)))
        folder = self.session_dir / view.session
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "overlay.png"
        path.write_bytes(encode_png(image))
        return str(path), icicle_html(view.tree, view.selected, bool(equal), view_colours(view))

    def panels(self, view: View, pending: bool = False) -> tuple[str, str]:
        """The selected-segment panel and the concepts panel."""
        info = view.info(view.selected) if view.selected else None
        panel = panel_html(info, view_colours(view), view.has_head, pending)
        return panel, concepts_html(view.tree, view.result.concept_thumbnails, info)

    def status_text(self, view: View) -> str:
        tree = view.tree
        t = tree.timings
        w, h = tree.size
        notes = "".join(f" · {n}" for n in tree.image_notes)
        return (f"**{self.explorer.models.label(view.result.model)}** · {w}×{h} px · {tree.num_superpixels} "
                f"superpixels → {' → '.join(str(n) for n in tree.num_segments)} segments · "
                f"{t.get('total', 0) * 1000:.0f} ms (superpixels {t.get('superpixels', 0) * 1000:.0f}, "
                f"forward {t.get('forward', 0) * 1000:.0f}){notes}")

    # -- segmenting ------------------------------------------------------------------------
    @timed
    def segment(self, image: str | None, model: str, level: int, opacity: float, bounds: bool, dim: bool, equal: bool,
                request: gr.Request | None = None):
        """Segment a photo into CAST's part-to-whole tree.

        Returns the overlay, the tree, the panels, the download files and the hierarchy as JSON
        (schema "cast-hierarchy", see cast.Hierarchy.to_dict).
        """
        if image is None:
            raise gr.Error("Upload a photo first (or pick an example).", title="No image")
        try:
            result = run_segment(self.explorer, image, model)
        except CastError as e:
            raise user_error(e) from None
        for note in result.tree.image_notes:
            gr.Warning(f"{result.tree.image_name}: {note}", title="Image converted")
        view = View.of(result, page=getattr(request, "session_hash", None))
        overlay_path, tree_html = self.draw(view, level, opacity, bounds, dim, equal)
        self.explorer.sessions.register(view)  # counted with its drawing caches; may release the least recently used
        panel, concepts = self.panels(view)
        return (view, overlay_path, tree_html, panel, level_predictions_html(result.tree), str(result.json_path),
                str(result.labels_path), overlay_path, result.tree.to_dict(), self.status_text(view), concepts)

    def resegment(self, image: str | None, model: str, level: int, opacity: float, bounds: bool, dim: bool, equal: bool,
                  request: gr.Request | None = None):
        if image is None:
            return (gr.skip(),) * SEGMENT_OUTPUTS
        return self.segment(image, model, level, opacity, bounds, dim, equal, request)

    def restore(self, view: View | None, browser: str | None, announced: str | None = None):
        """After segmenting: where this browser's annotations of this photo are saved, and the
        regions saved there earlier (an expired session, an app restart), if any. ``announced``
        names the save this page was last told about: segmenting the same photo again (an
        upload followed by a click on *Segment*) restores silently instead of repeating the notice.

        Returns the view and the save now announced."""
        store = self.explorer.autosave
        if view is None or view.expired or not store.valid_browser(browser):
            return gr.skip(), gr.skip()
        assert browser is not None
        view.autosave = store.path(browser, view.result.sha1, view.result.model)
        saved = store.load(view.autosave)
        if saved is None or view.annotations is not None:
            return view, gr.skip()
        from cast.annotations import Annotations

        try:
            ann = Annotations.from_dict(saved.annotations, view.tree)
        except (CastError, KeyError, ValueError, TypeError) as e:
            log.warning("autosave %s not restored: %s", saved.path.name, e)
            return view, gr.skip()
        if not len(ann):
            return view, gr.skip()
        view.annotations = ann
        key = f"{saved.path.name}@{saved.saved}"
        if key != announced:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved.saved))
            regions = f"{len(ann)} region{'s' if len(ann) != 1 else ''}"
            gr.Info(f"Restored {regions} you made on this photo (saved {when}): see the Annotate tab.",
                    title="Annotations restored")
        return view, key

    def change_model(self, model: str, previous: str):
        if model == previous:
            return gr.skip(), gr.skip(), previous
        try:
            self.explorer.models.segmenter(model)
        except CastError as e:
            gr.Warning(f"{model} could not be loaded, still using {previous}: {e.short}.", title="Model not available")
            return previous, gr.skip(), previous
        gr.Info(f"Model: {self.explorer.models.label(model)}")
        return model, gr.skip(), model

    # -- the default model while the app starts --------------------------------------------
    def page_open(self, browser: str | None):
        """A new page: the current default model, the notice, polling while the default loads, and
        this browser's id (kept in its local storage; made on its first visit)."""
        startup = self.explorer.startup
        notice = startup.notice
        if not self.explorer.autosave.valid_browser(browser):
            browser = uuid.uuid4().hex
        return (gr.update(value=notice or "", visible=bool(notice)), startup.current, startup.current,
                gr.Timer(active=startup.state == "loading"), browser)

    def poll_startup(self, model: str, active: str):
        """While the default model loads: progress in the notice; once ready, switch this page to it
        unless the person already picked another model."""
        startup = self.explorer.startup
        notice = startup.notice
        notice_update = gr.update(value=notice or "", visible=bool(notice))
        if startup.state == "loading":
            return notice_update, gr.skip(), gr.skip(), gr.skip()
        if startup.state == "ready" and model == active == BUNDLED and startup.current != BUNDLED:
            gr.Info(f"Model: {self.explorer.models.label(startup.current)} is ready")
            return notice_update, startup.current, startup.current, gr.Timer(active=False)
        return notice_update, gr.skip(), gr.skip(), gr.Timer(active=False)

    # -- selecting -------------------------------------------------------------------------
    def select(self, view: View, key: SegmentKey, level: int | None, opacity: float, bounds: bool, dim: bool, equal: bool):
        view.selected = key
        lv = int(key.level) if level is None else level
        path, tree_html = self.draw(view, lv, opacity, bounds, dim, equal)
        panel, concepts = self.panels(view, pending=view.needs_recognition())
        return view, lv, path, tree_html, panel, path, concepts

    @timed
    def on_overlay_click(self, view: View | None, level: int, opacity: float, bounds: bool, dim: bool, equal: bool,
                         evt: gr.SelectData):
        view = live_view(self.explorer, view)
        x, y = evt.index
        return self.select(view, view.key_at(x, y, int(level)), int(level), opacity, bounds, dim, equal)

    @timed
    def on_tree_click(self, view: View | None, opacity: float, bounds: bool, dim: bool, equal: bool, evt: gr.SelectData):
        view = live_view(self.explorer, view)
        try:
            key = SegmentKey.parse(str(evt.index))
            view.info(key)
        except (KeyError, ValueError, IndexError):
            raise gr.Error(f"no segment {evt.index!r} in this tree") from None
        return self.select(view, key, None, opacity, bounds, dim, equal)

    @timed
    def recognise(self, view: View | None):
        if view is None or view.expired or not view.needs_recognition():
            return gr.skip(), gr.skip()
        assert view.selected is not None
        try:
            run_recognise(self.explorer, view.result, view.selected)
        except CastError as e:
            raise user_error(e) from None
        return self.panels(view)[0], str(view.result.json_path)

    @timed
    def restyle(self, view: View | None, level: int, opacity: float, bounds: bool, dim: bool, equal: bool):
        if view is None:
            return gr.skip(), gr.skip(), gr.skip()
        view = live_view(self.explorer, view)
        path, tree_html = self.draw(view, level, opacity, bounds, dim, equal)
        return path, tree_html, path

    # -- compare ---------------------------------------------------------------------------
    def compare(self, view: View | None, level: int):
        view = live_view(self.explorer, view, lambda: gr.Error("Segment a photo first, then compare.", title="No image"))
        try:
            view.set_baseline(run_compare(self.explorer, view.result))
        except CastError as e:
            raise user_error(e) from None
        return (view,) + compare_images(view, level)

    def on_compare_click(self, view: View | None, level: int, evt: gr.SelectData):
        view = live_view(self.explorer, view, lambda: gr.Error("Run the comparison first.", title="Nothing to compare"))
        if view.baseline_maps is None:
            raise gr.Error("Run the comparison first.", title="Nothing to compare")
        view.compare_point = view.clamp(*evt.index)
        return compare_images(view, level)

    def on_compare_level(self, view: View | None, level: int) -> tuple[Any, Any, Any]:
        if view is None or view.expired or view.baseline_maps is None:
            return gr.skip(), gr.skip(), gr.skip()
        return compare_images(view, level)
