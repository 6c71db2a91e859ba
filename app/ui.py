"""The Gradio layout and its callbacks. Callbacks are glue: they call :class:`~app.service.Explorer`,
:class:`~app.view.View` and :mod:`app.render` and turn library errors into ``gr.Error`` messages.

Element ids (stable; tests and scripts use them): ``input-image``, ``model``, ``segment-button``,
``overlay``, ``level``, ``opacity``, ``boundaries``, ``dim``, ``equal-width``, ``tree``,
``segment-panel``, ``level-predictions``, ``download-json``, ``download-labels``,
``download-overlay``, ``hierarchy-json``, ``status``, ``notice``, ``compare-button``,
``compare-level``, ``compare-cast``, ``compare-vit``, ``compare-summary``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from cast import CastError, CastLoadError, ImageReadError

from .render import (
    OverlayStyle,
    colours,
    compare_summary,
    concepts_html,
    encode_png,
    icicle_html,
    level_predictions_html,
    overlay,
    panel_html,
    view_colours,
    view_overlay,
)
from .service import Explorer
from .view import LEVEL_CHOICES, View, display_maps, key_level

log = logging.getLogger("cast_explorer")

try:  # ZeroGPU Spaces: run the model function on a lent GPU; inert elsewhere
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


CLICK_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-node]');
  if (t) { trigger('select', {index: t.getAttribute('data-node'), value: t.getAttribute('data-node')}); }
});
"""

CSS = """
#overlay img { image-rendering: auto; cursor: crosshair; }
.cast-tree .breadcrumb { margin: 4px 0 8px; font-size: 0.95em; }
.cast-tree .crumb { cursor: pointer; padding: 1px 6px; border-radius: 4px; background: var(--block-background-fill); }
.cast-tree .crumb.current { font-weight: 700; outline: 2px solid #ffd600; }
.cast-tree .icicle-wrap { position: relative; padding-left: 44px; }
.cast-tree .row-labels { position: absolute; left: 0; top: 0; width: 40px; font-size: 0.8em; }
.cast-tree .row-label { position: absolute; display: flex; align-items: center; }
.cast-tree svg.icicle { width: 100%; display: block; }
.cast-tree svg .node { cursor: pointer; }
.cast-tree svg .node rect { stroke: rgba(255,255,255,0.9); stroke-width: 1; vector-effect: non-scaling-stroke; }
.cast-tree svg .node text { font-size: 12px; fill: #111; }
.cast-tree svg .off-path rect { opacity: 0.55; }
.cast-tree svg .on-path rect { stroke: #222; stroke-width: 2; }
.cast-tree svg .selected rect { stroke: #ffd600; stroke-width: 4; }
.segment-panel h4 { margin: 0 0 6px; }
.segment-panel table { width: 100%; font-size: 0.9em; }
.segment-panel th { text-align: left; width: 90px; }
.chip { display: inline-block; cursor: pointer; border: 2px solid #999; border-radius: 10px;
        padding: 0 6px; margin: 1px; font-size: 0.85em; }
.preds .pred { display: flex; align-items: center; gap: 6px; font-size: 0.9em; }
.preds .lbl { width: 45%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.preds .bar { flex: 1; height: 8px; background: rgba(127,127,127,0.2); border-radius: 4px; }
.preds .bar span { display: block; height: 8px; background: #4e79a7; border-radius: 4px; }
.preds .p { width: 52px; text-align: right; font-variant-numeric: tabular-nums; }
.level-cols { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }
.level-col h5, .segment-panel h5 { margin: 8px 0 4px; }
svg.trend text { font-size: 11px; } svg.trend text.tick { fill: currentColor; }
svg.trend .axis { stroke: currentColor; stroke-opacity: 0.5; }
.muted { opacity: 0.7; } .small { font-size: 0.8em; }
#notice { border-left: 4px solid #f28e2b; padding-left: 8px; }
.concepts .concept-step { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
.concepts .cid { font-weight: 700; width: 56px; } .concepts .conf { width: 40px; font-variant-numeric: tabular-nums; }
.concepts .thumbs { display: inline-flex; gap: 3px; flex-wrap: wrap; }
.concepts .thumbs img { display: inline-block; width: 40px; height: 40px; margin: 0; border-radius: 3px; object-fit: cover; }
.concepts .agree { color: #59a14f; font-size: 0.85em; } .concepts .differ { color: #e15759; font-size: 0.85em; }
"""

INTRO = """# CAST Explorer
CAST (Ke, Mo, Yu, ICLR 2024) reads an image as superpixels and merges them, stage by stage, into
64 → 32 → 16 → 8 segments: one forward pass gives a class *and* a part-to-whole tree. Drop a photo,
click a region or a node of the tree, and export the hierarchy."""


def photo_input(**kwargs: Any) -> gr.Image:
    """``gr.Image`` that hands the uploaded file to the callback untouched, so every decoding problem
    (not an image, truncated, a bomb, odd modes) is reported by ``cast.image.read_image`` with a clear
    message instead of failing inside Gradio's preprocessing. (An instance override rather than a
    subclass: Gradio writes a ``.pyi`` file beside any module that subclasses a component.)"""
    component = gr.Image(type="filepath", **kwargs)
    gradio_preprocess = component.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.path is None:  # base64 data URL (webcam in some browsers): let Gradio decode it
            return gradio_preprocess(payload)  # type: ignore[return-value]
        return str(payload.path)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _error(e: Exception) -> gr.Error:
    if isinstance(e, ImageReadError):
        return gr.Error(str(e), title="Not an image we can read")
    if isinstance(e, CastLoadError):
        return gr.Error(str(e), title="Model not available")
    return gr.Error(str(e))


def build(explorer: Explorer) -> gr.Blocks:
    cfg = explorer.cfg
    choices = [(c.label, c.name) for c in explorer.models.choices()]
    examples = sorted(p for p in Path(cfg.examples_dir).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    session_dir = explorer.root / "sessions"
    session_dir.mkdir(exist_ok=True)

    # -- glue helpers ----------------------------------------------------------------------
    def draw(view: View, level: int, opacity: float, bounds: bool, dim: bool, equal: bool) -> tuple[str, str]:
        """The overlay (written as this session's ``overlay.png``) and the tree."""
        image = view_overlay(view, OverlayStyle(int(level), float(opacity), bool(bounds), bool(dim)))
        folder = session_dir / view.session
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "overlay.png"
        path.write_bytes(encode_png(image))
        return str(path), icicle_html(view.tree, view.selected, bool(equal), view_colours(view))

    def panels(view: View, pending: bool = False) -> tuple[str, str]:
        """The selected-segment panel and the concepts panel."""
        info = view.info(view.selected) if view.selected else None
        panel = panel_html(info, view_colours(view), view.tree.level_predictions is not None, pending)
        return panel, concepts_html(view.tree, view.result.concept_thumbnails, info)

    def status_text(view: View) -> str:
        tree = view.tree
        t = tree.timings
        w, h = tree.size
        notes = "".join(f" · {n}" for n in tree.image_notes)
        return (f"**{explorer.models.label(view.result.model)}** · {w}×{h} px · {tree.superpixel_to_level1.shape[0]} "
                f"superpixels → {' → '.join(str(n) for n in tree.num_segments)} segments · "
                f"{t.get('total', 0) * 1000:.0f} ms (superpixels {t.get('superpixels', 0) * 1000:.0f}, "
                f"forward {t.get('forward', 0) * 1000:.0f}){notes}")

    def needs_recognition(view: View | None) -> bool:
        return bool(view and view.selected and view.selected.startswith("L") and view.tree.level_predictions is not None
                    and view.selected not in view.tree.segment_predictions)

    # -- callbacks ---------------------------------------------------------------------------
    @gpu
    @timed
    def segment(image: str | None, model: str, level: int, opacity: float, bounds: bool, dim: bool, equal: bool):
        """Segment a photo into CAST's part-to-whole tree.

        Returns the overlay, the tree, the panels, the download files and the hierarchy as JSON
        (schema "cast-hierarchy", see cast.Hierarchy.to_dict).
        """
        if image is None:
            raise gr.Error("Upload a photo first (or pick an example).", title="No image")
        try:
            result = explorer.segment(image, model)
        except CastError as e:
            raise _error(e) from None
        for note in result.tree.image_notes:
            gr.Warning(f"{result.tree.image_name}: {note}", title="Image converted")
        view = View.of(result)
        overlay_path, tree_html = draw(view, level, opacity, bounds, dim, equal)
        panel, concepts = panels(view)
        return (view, overlay_path, tree_html, panel, level_predictions_html(result.tree), str(result.json_path),
                str(result.labels_path), overlay_path, result.tree.to_dict(), status_text(view), concepts)

    def resegment(image: str | None, model: str, level: int, opacity: float, bounds: bool, dim: bool, equal: bool):
        if image is None:
            return (gr.skip(),) * len(seg_outputs)
        return segment(image, model, level, opacity, bounds, dim, equal)

    def select(view: View | None, key: str, level: int | None, opacity: float, bounds: bool, dim: bool, equal: bool):
        if view is None:
            raise gr.Error("The session has expired or no image is segmented yet: segment a photo first.", title="No image")
        view.selected = key
        lv = key_level(key) if level is None else level
        path, tree_html = draw(view, lv, opacity, bounds, dim, equal)
        panel, concepts = panels(view, pending=needs_recognition(view))
        return view, lv, path, tree_html, panel, path, concepts

    @timed
    def on_overlay_click(view: View | None, level: int, opacity: float, bounds: bool, dim: bool, equal: bool,
                         evt: gr.SelectData):
        if view is None:
            raise gr.Error("Segment a photo first.", title="No image")
        x, y = evt.index
        return select(view, view.key_at(x, y, int(level)), int(level), opacity, bounds, dim, equal)

    @timed
    def on_tree_click(view: View | None, opacity: float, bounds: bool, dim: bool, equal: bool, evt: gr.SelectData):
        key = str(evt.index)
        if view is None:
            raise gr.Error("Segment a photo first.", title="No image")
        try:
            view.info(key)
        except (KeyError, ValueError, IndexError):
            raise gr.Error(f"no segment {key!r} in this tree") from None
        return select(view, key, None, opacity, bounds, dim, equal)

    @gpu
    @timed
    def recognise(view: View | None):
        if not needs_recognition(view):
            return gr.skip(), gr.skip()
        assert view is not None and view.selected is not None
        try:
            explorer.recognise(view.result, view.selected)
        except CastError as e:
            raise _error(e) from None
        return panels(view)[0], str(view.result.json_path)

    @timed
    def restyle(view: View | None, level: int, opacity: float, bounds: bool, dim: bool, equal: bool):
        if view is None:
            return gr.skip(), gr.skip(), gr.skip()
        path, tree_html = draw(view, level, opacity, bounds, dim, equal)
        return path, tree_html, path

    def change_model(model: str, previous: str):
        if model == previous:
            return gr.skip(), gr.skip(), previous
        try:
            explorer.models.predictor(model)
        except CastError as e:
            reason = str(e).split(". ")[0]
            gr.Warning(f"{model} could not be loaded, still using {previous}: {reason}.", title="Model not available")
            return previous, gr.skip(), previous
        gr.Info(f"Model: {explorer.models.label(model)}")
        return model, gr.skip(), model

    @gpu
    def compare(view: View | None, level: int):
        if view is None:
            raise gr.Error("Segment a photo first, then compare.", title="No image")
        try:
            tree = explorer.compare(view.result)
        except CastError as e:
            raise _error(e) from None
        w, h = view.size
        view.baseline_maps = display_maps(tree, (w, h))
        view.compare_point = None
        return (view,) + draw_compare(view, level)

    def draw_compare(view: View, level: int) -> tuple[np.ndarray, np.ndarray, str]:
        level = min(max(int(level), 1), 4)
        style = OverlayStyle(level, 0.55, True, False)
        cast_mask = vit_mask = None
        summary = compare_summary(None, None, None)
        if view.compare_point is not None and view.baseline_maps is not None:
            x, y = view.compare_point
            cast_id = int(view.maps[level][y, x])
            vit_id = int(view.baseline_maps[level][y, x])
            cast_mask = view.maps[level] == cast_id
            vit_mask = view.baseline_maps[level] == vit_id
            union = np.count_nonzero(cast_mask | vit_mask)
            iou = np.count_nonzero(cast_mask & vit_mask) / max(union, 1)
            n = cast_mask.size
            summary = compare_summary((f"L{level}-{cast_id}", cast_mask.sum() / n), (f"L{level}-{vit_id}", vit_mask.sum() / n), iou)
        assert view.result.baseline is not None and view.baseline_maps is not None
        if "baseline_colours" not in view.cache:
            view.cache["baseline_colours"] = colours(view.result.baseline)
        cast_img = overlay(view.result.photo, view.maps, view_colours(view), style, cast_mask)
        vit_img = overlay(view.result.photo, view.baseline_maps, view.cache["baseline_colours"], style, vit_mask)
        return cast_img, vit_img, summary

    def on_compare_click(view: View | None, level: int, evt: gr.SelectData):
        if view is None or view.baseline_maps is None:
            raise gr.Error("Run the comparison first.", title="Nothing to compare")
        w, h = view.size
        x, y = evt.index
        view.compare_point = (min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1))
        return draw_compare(view, level)

    def on_compare_level(view: View | None, level: int):
        if view is None or view.baseline_maps is None:
            return gr.skip(), gr.skip(), gr.skip()
        return draw_compare(view, level)

    # -- layout ------------------------------------------------------------------------------
    with gr.Blocks(title="CAST Explorer", delete_cache=(900, 3600)) as demo:
        view_state = gr.State(None, time_to_live=cfg.session_ttl)
        active_model = gr.State(explorer.default)
        gr.Markdown(INTRO)
        gr.Markdown(explorer.notice or "", elem_id="notice", visible=bool(explorer.notice))
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=2, min_width=280):
                    image = photo_input(label="Photo", sources=["upload", "clipboard", "webcam"], elem_id="input-image",
                                        height=300)
                    model = gr.Dropdown(choices, value=explorer.default, label="Model", elem_id="model")
                    button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                    gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples (photos and PartShapes)",
                                examples_per_page=12, api_visibility="private")
                with gr.Column(scale=3, min_width=360):
                    overlay_img = gr.Image(label="Segments (click one)", type="filepath", format="png", interactive=False,
                                           elem_id="overlay", buttons=["fullscreen"])
                    with gr.Row():
                        level = gr.Radio(LEVEL_CHOICES, value=2, label="Level (segments)", elem_id="level")
                    with gr.Row():
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity", elem_id="opacity")
                        bounds = gr.Checkbox(True, label="Boundaries", elem_id="boundaries")
                        dim = gr.Checkbox(False, label="Dim the rest", elem_id="dim")
            status = gr.Markdown("", elem_id="status")
            with gr.Row():
                with gr.Column(scale=3):
                    tree = gr.HTML(icicle_placeholder(), js_on_load=CLICK_JS, elem_id="tree", label="Tree")
                    equal = gr.Checkbox(False, label="Equal-width leaves", elem_id="equal-width")
                    gr.Markdown("### Concepts (semantic hierarchy)")
                    concepts_panel = gr.HTML("", elem_id="concepts")
                with gr.Column(scale=2):
                    panel = gr.HTML(panel_html(None, {}, True), js_on_load=CLICK_JS, elem_id="segment-panel")
            gr.Markdown("### What the model sees at each level")
            level_preds = gr.HTML("", elem_id="level-predictions")
            with gr.Row():
                dl_json = gr.DownloadButton("hierarchy.json", value=None, elem_id="download-json")
                dl_labels = gr.DownloadButton("label maps (zip)", value=None, elem_id="download-labels")
                dl_overlay = gr.DownloadButton("overlay.png", value=None, elem_id="download-overlay")
            with gr.Accordion("Hierarchy JSON", open=False):
                json_out = gr.JSON(elem_id="hierarchy-json")
        with gr.Tab("Compare", elem_id="compare-tab"):
            gr.Markdown("The same photo parsed by CAST and by a ViT whose patch tokens are grouped by hierarchical "
                        "k-means (the paper's comparison). Click either image to outline the segment under the click "
                        "in both.")
            with gr.Row():
                compare_button = gr.Button("Compare with ViT + k-means", elem_id="compare-button")
                compare_level = gr.Radio(LEVEL_CHOICES[1:5], value=2, label="Level", elem_id="compare-level")
            with gr.Row():
                cast_img = gr.Image(label="CAST", format="png", interactive=False, elem_id="compare-cast")
                vit_img = gr.Image(label="ViT + k-means", format="png", interactive=False, elem_id="compare-vit")
            compare_text = gr.Markdown(compare_summary(None, None, None), elem_id="compare-summary")

        # -- events -------------------------------------------------------------------------
        controls = [level, opacity, bounds, dim, equal]
        seg_outputs = [view_state, overlay_img, tree, panel, level_preds, dl_json, dl_labels, dl_overlay, json_out, status,
                       concepts_panel]
        sel_outputs = [view_state, level, overlay_img, tree, panel, dl_overlay, concepts_panel]
        seg_kw: dict[str, Any] = dict(concurrency_limit=cfg.workers, concurrency_id="segment")
        button.click(segment, [image, model, *controls], seg_outputs, api_name="segment", api_visibility="public", **seg_kw)
        image.change(resegment, [image, model, *controls], seg_outputs, api_visibility="private", **seg_kw)
        overlay_img.select(on_overlay_click, [view_state, *controls], sel_outputs, api_visibility="private",
                           trigger_mode="always_last", show_progress="hidden").then(
            recognise, [view_state], [panel, dl_json], api_visibility="private", show_progress="hidden", **seg_kw)
        for source in (tree, panel):
            source.select(on_tree_click, [view_state, opacity, bounds, dim, equal], sel_outputs, api_visibility="private",
                          trigger_mode="always_last", show_progress="hidden").then(
                recognise, [view_state], [panel, dl_json], api_visibility="private", show_progress="hidden", **seg_kw)
        for control in (level, bounds, dim, equal):
            control.input(restyle, [view_state, *controls], [overlay_img, tree, dl_overlay], api_visibility="private",
                          show_progress="hidden", trigger_mode="always_last")
        opacity.release(restyle, [view_state, *controls], [overlay_img, tree, dl_overlay], api_visibility="private",
                        show_progress="hidden", trigger_mode="always_last")
        model.select(change_model, [model, active_model], [model, status, active_model], api_visibility="private",
                    concurrency_limit=1, concurrency_id="load").success(
            resegment, [image, model, *controls], seg_outputs, api_visibility="private", **seg_kw)
        compare_button.click(compare, [view_state, compare_level], [view_state, cast_img, vit_img, compare_text],
                             api_visibility="private", **seg_kw)
        for img in (cast_img, vit_img):
            img.select(on_compare_click, [view_state, compare_level], [cast_img, vit_img, compare_text],
                       api_visibility="private", show_progress="hidden")
        compare_level.input(on_compare_level, [view_state, compare_level], [cast_img, vit_img, compare_text],
                            api_visibility="private", show_progress="hidden")
    return demo


def icicle_placeholder() -> str:
    return '<div class="cast-tree"><div class="breadcrumb">The tree appears here after segmenting a photo.</div></div>'


__all__ = ["build", "CSS", "photo_input"]
