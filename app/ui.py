"""The Gradio page: layout and event wiring only. What each event does is in
:class:`app.callbacks.Callbacks`.

Element ids (stable; tests and scripts use them): ``input-image``, ``model``, ``segment-button``,
``overlay``, ``level``, ``opacity``, ``boundaries``, ``dim``, ``equal-width``, ``tree``,
``segment-panel``, ``level-predictions``, ``download-json``, ``download-labels``,
``download-overlay``, ``hierarchy-json``, ``status``, ``notice``, ``compare-button``,
``compare-level``, ``compare-cast``, ``compare-vit``, ``compare-summary``; Annotate tab:
``annotate-tab``, ``annotate-overlay``, ``annotate-level``, ``annotate-picked``, ``region-label``,
``label-suggestions``, ``add-region``, ``extend-region``, ``shrink-region``, ``relabel-region``,
``delete-region``, ``clear-picked``, ``undo``, ``redo``, ``region-parent``, ``regions``,
``annotate-message``, ``export-coco``, ``export-labelstudio``, ``export-json``, ``import-json``,
``annotate-file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .annotate import SHORTCUTS, AnnotateCallbacks
from .callbacks import Callbacks
from .render import compare_summary, panel_html
from .service import Explorer, example_files
from .view import LEVEL_CHOICES

__all__ = ["build", "CSS", "HEAD", "photo_input"]

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
.taxonomy-path .step + .step::before { content: " → "; opacity: 0.6; }
.taxonomy-path, .taxonomy-agree, .taxonomy-disagree { margin-top: 8px; }
.taxonomy-disagree { color: #b3261e; font-weight: 600; } .taxonomy-agree { color: #2e7d32; }
#notice { border-left: 4px solid #f28e2b; padding-left: 8px; }
.concepts .concept-step { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
.concepts .cid { font-weight: 700; width: 56px; } .concepts .conf { width: 40px; font-variant-numeric: tabular-nums; }
.concepts .thumbs { display: inline-flex; gap: 3px; flex-wrap: wrap; }
.concepts .thumbs img { display: inline-block; width: 40px; height: 40px; margin: 0; border-radius: 3px; object-fit: cover; }
.concepts .agree { color: #59a14f; font-size: 0.85em; } .concepts .differ { color: #e15759; font-size: 0.85em; }
#annotate-overlay img { cursor: crosshair; }
.regions ul.region-tree { list-style: none; padding-left: 14px; margin: 2px 0; }
.regions .region { display: inline-block; cursor: pointer; border-left: 6px solid #999; padding: 1px 6px; margin: 1px 0;
                   border-radius: 3px; }
.regions .region.active { outline: 2px solid #00e5ff; }
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


@dataclass
class Page:
    """The components the events read and write."""

    view: gr.State
    active_model: gr.State
    browser: gr.BrowserState  # this browser's id (local storage): names its autosaved annotations
    announced: gr.State  # the autosave this page last announced as restored (one notice per restore)
    image: gr.Image
    model: gr.Dropdown
    button: gr.Button
    overlay: gr.Image
    level: gr.Radio
    opacity: gr.Slider
    bounds: gr.Checkbox
    dim: gr.Checkbox
    status: gr.Markdown
    tree: gr.HTML
    equal: gr.Checkbox
    concepts: gr.HTML
    panel: gr.HTML
    level_preds: gr.HTML
    dl_json: gr.DownloadButton
    dl_labels: gr.DownloadButton
    dl_overlay: gr.DownloadButton
    json_out: gr.JSON
    compare_button: gr.Button
    compare_level: gr.Radio
    cast_img: gr.Image
    vit_img: gr.Image
    compare_text: gr.Markdown

    @property
    def controls(self) -> list[Any]:
        return [self.level, self.opacity, self.bounds, self.dim, self.equal]

    @property
    def segment_outputs(self) -> list[Any]:
        return [self.view, self.overlay, self.tree, self.panel, self.level_preds, self.dl_json, self.dl_labels,
                self.dl_overlay, self.json_out, self.status, self.concepts]

    @property
    def select_outputs(self) -> list[Any]:
        return [self.view, self.level, self.overlay, self.tree, self.panel, self.dl_overlay, self.concepts]


def _explore_tab(explorer: Explorer) -> dict[str, Any]:
    cfg = explorer.cfg
    c: dict[str, Any] = {}
    with gr.Tab("Explore"):
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                c["image"] = photo_input(label="Photo", sources=["upload", "clipboard", "webcam"], elem_id="input-image",
                                         height=300)
                c["model"] = gr.Dropdown([(m.label, m.name) for m in explorer.models.choices()], value=explorer.default,
                                         label="Model", elem_id="model")
                c["button"] = gr.Button("Segment", variant="primary", elem_id="segment-button")
                gr.Examples([[str(p)] for p in example_files(cfg.examples_dir)], inputs=[c["image"]],
                            label="Examples (photos and PartShapes)", examples_per_page=12, api_visibility="private")
            with gr.Column(scale=3, min_width=360):
                c["overlay"] = gr.Image(label="Segments (click one)", type="filepath", format="png", interactive=False,
                                        elem_id="overlay", buttons=["fullscreen"])
                with gr.Row():
                    c["level"] = gr.Radio(LEVEL_CHOICES, value=2, label="Level (segments)", elem_id="level")
                with gr.Row():
                    c["opacity"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity", elem_id="opacity")
                    c["bounds"] = gr.Checkbox(True, label="Boundaries", elem_id="boundaries")
                    c["dim"] = gr.Checkbox(False, label="Dim the rest", elem_id="dim")
        c["status"] = gr.Markdown("", elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                c["tree"] = gr.HTML(icicle_placeholder(), js_on_load=CLICK_JS, elem_id="tree", label="Tree")
                c["equal"] = gr.Checkbox(False, label="Equal-width leaves", elem_id="equal-width")
                gr.Markdown("### Concepts (semantic hierarchy)")
                c["concepts"] = gr.HTML("", elem_id="concepts")
            with gr.Column(scale=2):
                c["panel"] = gr.HTML(panel_html(None, {}, True), js_on_load=CLICK_JS, elem_id="segment-panel")
        gr.Markdown("### What the model sees at each level")
        c["level_preds"] = gr.HTML("", elem_id="level-predictions")
        with gr.Row():
            c["dl_json"] = gr.DownloadButton("hierarchy.json", value=None, elem_id="download-json")
            c["dl_labels"] = gr.DownloadButton("label maps (zip)", value=None, elem_id="download-labels")
            c["dl_overlay"] = gr.DownloadButton("overlay.png", value=None, elem_id="download-overlay")
        with gr.Accordion("Hierarchy JSON", open=False):
            c["json_out"] = gr.JSON(elem_id="hierarchy-json")
    return c


def _compare_tab() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Tab("Compare", elem_id="compare-tab"):
        gr.Markdown("The same photo parsed by CAST and by a ViT whose patch tokens are grouped by hierarchical "
                    "k-means (the paper's comparison). Click either image to outline the segment under the click "
                    "in both.")
        with gr.Row():
            c["compare_button"] = gr.Button("Compare with ViT + k-means", elem_id="compare-button")
            c["compare_level"] = gr.Radio(LEVEL_CHOICES[1:5], value=2, label="Level", elem_id="compare-level")
        with gr.Row():
            c["cast_img"] = gr.Image(label="CAST", format="png", interactive=False, elem_id="compare-cast")
            c["vit_img"] = gr.Image(label="ViT + k-means", format="png", interactive=False, elem_id="compare-vit")
        c["compare_text"] = gr.Markdown(compare_summary(None), elem_id="compare-summary")
    return c


def _wire_explore(page: Page, cb: Callbacks, workers: int) -> None:
    seg_kw: dict[str, Any] = dict(concurrency_limit=workers, concurrency_id="segment")
    quiet: dict[str, Any] = dict(api_visibility="private", show_progress="hidden")
    restore = (cb.restore, [page.view, page.browser, page.announced], [page.view, page.announced])
    page.button.click(cb.segment, [page.image, page.model, *page.controls], page.segment_outputs, api_name="segment",
                      api_visibility="public", **seg_kw).success(*restore, **quiet)
    page.image.change(cb.resegment, [page.image, page.model, *page.controls], page.segment_outputs,
                      api_visibility="private", **seg_kw).success(*restore, **quiet)
    page.overlay.select(cb.on_overlay_click, [page.view, *page.controls], page.select_outputs, trigger_mode="always_last",
                        **quiet).then(cb.recognise, [page.view], [page.panel, page.dl_json], **quiet, **seg_kw)
    for source in (page.tree, page.panel):
        source.select(cb.on_tree_click, [page.view, page.opacity, page.bounds, page.dim, page.equal], page.select_outputs,
                      trigger_mode="always_last", **quiet).then(
            cb.recognise, [page.view], [page.panel, page.dl_json], **quiet, **seg_kw)
    restyled = [page.overlay, page.tree, page.dl_overlay]
    for control in (page.level, page.bounds, page.dim, page.equal):
        control.input(cb.restyle, [page.view, *page.controls], restyled, trigger_mode="always_last", **quiet)
    page.opacity.release(cb.restyle, [page.view, *page.controls], restyled, trigger_mode="always_last", **quiet)
    page.model.select(cb.change_model, [page.model, page.active_model], [page.model, page.status, page.active_model],
                      api_visibility="private", concurrency_limit=1, concurrency_id="load").success(
        cb.resegment, [page.image, page.model, *page.controls], page.segment_outputs, api_visibility="private", **seg_kw
    ).success(*restore, **quiet)


def _wire_compare(page: Page, cb: Callbacks, workers: int) -> None:
    pictures = [page.cast_img, page.vit_img, page.compare_text]
    page.compare_button.click(cb.compare, [page.view, page.compare_level], [page.view, *pictures],
                              api_visibility="private", concurrency_limit=workers, concurrency_id="segment")
    for img in (page.cast_img, page.vit_img):
        img.select(cb.on_compare_click, [page.view, page.compare_level], pictures, api_visibility="private",
                   show_progress="hidden")
    page.compare_level.input(cb.on_compare_level, [page.view, page.compare_level], pictures, api_visibility="private",
                             show_progress="hidden")


REGION_CLICK_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-region]');
  if (t) { trigger('select', {index: t.getAttribute('data-region'), value: t.getAttribute('data-region')}); }
});
"""

# Page-wide script (launch(head=...)): the shift key of the last click, and the Annotate shortcuts.
HEAD = """<script>
window.castShift = false;
document.addEventListener('mousedown', (e) => { window.castShift = e.shiftKey; }, true);
document.addEventListener('keydown', (e) => {
  const tab = document.getElementById('annotate-tab');
  if (!tab || tab.offsetParent === null) return;  // only while the Annotate tab is shown
  const typing = ['INPUT', 'TEXTAREA'].includes((document.activeElement || {}).tagName);
  const press = (id) => { const b = document.getElementById(id); if (b) { e.preventDefault(); b.click(); } };
  const key = e.key.toLowerCase(), mod = e.ctrlKey || e.metaKey;
  if (mod && key === 'z' && !e.shiftKey && !typing) press('undo');
  else if (mod && (key === 'y' || (key === 'z' && e.shiftKey)) && !typing) press('redo');
  else if (key === 'delete' && !typing) press('delete-region');
  else if (key === 'escape') press('clear-picked');
});
</script>"""


def _annotate_tab() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Tab("Annotate", elem_id="annotate-tab") as c["tab"]:
        gr.Markdown(SHORTCUTS)
        with gr.Row():
            with gr.Column(scale=3, min_width=360):
                c["overlay"] = gr.Image(label="Pick segments (shift-click to add)", type="filepath", format="png",
                                        interactive=False, elem_id="annotate-overlay")
                c["level"] = gr.Radio(LEVEL_CHOICES[1:5], value=3, label="Pick at level (segments)", elem_id="annotate-level")
                c["picked"] = gr.Markdown("", elem_id="annotate-picked")
            with gr.Column(scale=2, min_width=280):
                c["label"] = gr.Textbox(label="Label", placeholder="type a label, Enter adds a region", elem_id="region-label")
                c["suggestions"] = gr.Radio([], label="Suggestions (the model, labels used)", elem_id="label-suggestions")
                with gr.Row():
                    c["add"] = gr.Button("Add region", variant="primary", elem_id="add-region")
                    c["clear"] = gr.Button("Clear picked", elem_id="clear-picked")
                with gr.Row():
                    c["extend"] = gr.Button("Extend region", elem_id="extend-region")
                    c["shrink"] = gr.Button("Shrink region", elem_id="shrink-region")
                    c["relabel"] = gr.Button("Relabel", elem_id="relabel-region")
                    c["delete"] = gr.Button("Delete region", elem_id="delete-region")
                with gr.Row():
                    c["undo"] = gr.Button("Undo", elem_id="undo")
                    c["redo"] = gr.Button("Redo", elem_id="redo")
                c["parent"] = gr.Dropdown([], label="Part of", interactive=False, elem_id="region-parent")
                c["regions"] = gr.HTML('<div class="regions muted">No regions yet.</div>', js_on_load=REGION_CLICK_JS,
                                       elem_id="regions")
                c["message"] = gr.Markdown("", elem_id="annotate-message")
        with gr.Row():
            c["export_coco"] = gr.Button("Export COCO", elem_id="export-coco")
            c["export_ls"] = gr.Button("Export Label Studio", elem_id="export-labelstudio")
            c["export_json"] = gr.Button("Export hierarchy.json", elem_id="export-json")
            c["import"] = gr.UploadButton("Import hierarchy.json", file_types=[".json"], elem_id="import-json")
        c["file"] = gr.File(label="Exported file", interactive=False, elem_id="annotate-file")
    return c


def _wire_annotate(c: dict[str, Any], view: gr.State, ac: AnnotateCallbacks) -> None:
    outs = [view, c["overlay"], c["regions"], c["picked"], c["suggestions"], c["parent"], c["message"]]
    quiet: dict[str, Any] = dict(api_visibility="private", show_progress="hidden")
    lv = c["level"]
    c["tab"].select(ac.show, [view, lv], outs, **quiet)
    lv.input(ac.show, [view, lv], outs, **quiet)
    shift = gr.Checkbox(False, visible=False)
    c["overlay"].select(ac.on_click, [view, lv, shift], outs, js="(view, level, shift) => [view, level, window.castShift]",
                        trigger_mode="always_last", **quiet)
    c["clear"].click(ac.clear, [view, lv], outs, **quiet)
    for trigger in (c["add"].click, c["label"].submit):
        trigger(ac.add_region, [view, lv, c["label"]], outs, **quiet).success(lambda: "", None, c["label"], **quiet)
    c["suggestions"].select(lambda choice: choice, c["suggestions"], c["label"], **quiet)
    c["extend"].click(ac.extend, [view, lv], outs, **quiet)
    c["shrink"].click(ac.shrink, [view, lv], outs, **quiet)
    c["relabel"].click(ac.relabel, [view, lv, c["label"]], outs, **quiet)
    c["delete"].click(ac.delete, [view, lv], outs, **quiet)
    c["undo"].click(ac.undo, [view, lv], outs, **quiet)
    c["redo"].click(ac.redo, [view, lv], outs, **quiet)
    c["parent"].input(ac.set_parent, [view, lv, c["parent"]], outs, **quiet)
    c["regions"].select(ac.on_region_click, [view, lv], [*outs, c["label"]], **quiet)
    c["export_coco"].click(ac.export_coco, [view], c["file"], **quiet)
    c["export_ls"].click(ac.export_labelstudio, [view], c["file"], **quiet)
    c["export_json"].click(ac.export_json, [view], c["file"], **quiet)
    c["import"].upload(ac.import_json, [view, lv, c["import"]], outs, **quiet)


def build(explorer: Explorer) -> gr.Blocks:
    """The page: layout, then the wiring of every event to :class:`~app.callbacks.Callbacks`
    (and :class:`~app.annotate.AnnotateCallbacks`)."""
    cb = Callbacks(explorer)
    with gr.Blocks(title="CAST Explorer", delete_cache=(900, 3600)) as demo:
        view = gr.State(None, time_to_live=explorer.cfg.session_ttl)
        active_model = gr.State(explorer.default)
        browser = gr.BrowserState(None, storage_key="cast-explorer-browser", secret=explorer.autosave.browser_secret())
        gr.Markdown(INTRO)
        notice = gr.Markdown(explorer.notice or "", elem_id="notice", visible=bool(explorer.notice))
        startup_timer = gr.Timer(2.0, active=False)
        page = Page(view=view, active_model=active_model, browser=browser, announced=gr.State(None),
                    **_explore_tab(explorer), **_compare_tab())
        annotate = _annotate_tab()
        _wire_explore(page, cb, explorer.cfg.workers)
        _wire_compare(page, cb, explorer.cfg.workers)
        _wire_annotate(annotate, view, AnnotateCallbacks(explorer))
        startup = [notice, page.model, page.active_model, startup_timer]
        demo.load(cb.page_open, browser, [*startup, browser], api_visibility="private", show_progress="hidden")
        startup_timer.tick(cb.poll_startup, [page.model, page.active_model], startup, api_visibility="private",
                           show_progress="hidden")
    return demo


def icicle_placeholder() -> str:
    return '<div class="cast-tree"><div class="breadcrumb">The tree appears here after segmenting a photo.</div></div>'
