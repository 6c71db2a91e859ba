"""The Annotate tab's event handlers: pick segments at any level, make them labelled regions,
shape the part-of tree, undo / redo, export (COCO, Label Studio, hierarchy.json), import.

Glue only: the annotation model is :class:`cast.annotations.Annotations` (one per session, in
:class:`~app.view.View`), the drawing :func:`app.render.annotate_overlay` / :func:`app.render.regions_html`,
the files :func:`app.service.write_export`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from cast import CastError
from cast.annotations import AnnotationError, Annotations, read_annotations
from cast.labelmaps import MapsUnavailableError

from .autosave import AUTOSAVE_SCHEMA
from .callbacks import expired_error, live_view, timed
from .render import annotate_overlay, encode_png, regions_html
from .service import Explorer, write_export
from .view import EXPIRED, View, annotations_of, label_suggestions, pick, picked_summary

log = logging.getLogger("cast_explorer")

__all__ = ["AnnotateCallbacks", "SHORTCUTS", "NO_PARENT", "ANNOTATE_OUTPUTS"]

NO_PARENT = "(none: a whole)"
ANNOTATE_OUTPUTS = 7  # view, overlay, regions, picked summary, label suggestions, parent, message
SHORTCUTS = ("**Keys**: click a segment to pick it, **shift-click** to add or drop one · **Enter** in the label box "
             "adds a region · **Ctrl+Z** undo · **Ctrl+Y** or **Ctrl+Shift+Z** redo · **Delete** deletes the region "
             "being edited · **Esc** clears the picked segments. Pick segments inside a region to make its parts; "
             "click a region in the list to edit it.")


def _no_image() -> gr.Error:
    return gr.Error("The session has expired or no image is segmented yet: segment a photo in Explore first.",
                    title="No image")


class AnnotateCallbacks:
    """The handlers; most return :data:`ANNOTATE_OUTPUTS` values (see :meth:`render`)."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer
        self.folder = explorer.root / "sessions"
        self.folder.mkdir(exist_ok=True)

    def render(self, view: View, level: int, message: str = "") -> tuple[Any, ...]:
        ann = annotations_of(view)
        folder = self.folder / view.session
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "annotate.png"
        path.write_bytes(encode_png(annotate_overlay(view, level)))
        others = [(f"{r.label} ({r.id})", r.id) for r in ann.regions.values() if r.id != view.active]
        parent = ann.regions[view.active].parent if view.active in ann.regions else None
        parent_update = gr.update(choices=[(NO_PARENT, NO_PARENT), *others], value=parent or NO_PARENT,
                                  interactive=view.active in ann.regions)
        return (view, str(path), regions_html(view), picked_summary(view),
                gr.update(choices=label_suggestions(view), value=None), parent_update, message)

    def _live(self, view: View | None) -> View:
        return live_view(self.explorer, view, _no_image)

    def _edit(self, view: View | None, level: int, action: Any, done: str) -> tuple[Any, ...]:
        view = self._live(view)
        try:
            result = action(annotations_of(view))
        except (AnnotationError, KeyError, ValueError) as e:
            short = getattr(e, "short", "that edit is not possible")
            gr.Warning(str(e), title=short)
            return self.render(view, level, f"⚠ {short}")
        self.save(view)
        return self.render(view, level, done.format(result=result))

    def save(self, view: View) -> None:
        """Autosave the view's annotations (after every edit; atomic, see :mod:`app.autosave`)."""
        if view.autosave is None or view.annotations is None:
            return
        try:
            self.explorer.autosave.save(view.autosave, view.annotations.to_dict(), view.tree.image_name,
                                        view.result.sha1, view.result.model)
        except OSError as e:
            log.warning("autosave %s failed: %s", view.autosave, e)
            gr.Warning(f"Your annotations could not be saved on the server ({e.strerror}); export them to keep them.",
                       title="Autosave failed")

    # -- picking ---------------------------------------------------------------------------
    def show(self, view: View | None, level: int):
        """The tab was opened (or the photo changed)."""
        if view is None or view.expired:
            return (gr.skip(),) * ANNOTATE_OUTPUTS
        return self.render(view, level)

    @timed
    def on_click(self, view: View | None, level: int, shift: bool, evt: gr.SelectData):
        view = self._live(view)
        x, y = evt.index
        pick(view, view.key_at(x, y, int(level)), add=bool(shift))
        return self.render(view, level)

    def clear(self, view: View | None, level: int):
        view = self._live(view)
        view.picked = []
        return self.render(view, level)

    # -- regions ---------------------------------------------------------------------------
    @timed
    def add_region(self, view: View | None, level: int, label: str):
        def act(ann: Any) -> str:
            rid = ann.create(view.picked, label)
            view.picked, view.active = [], rid
            return rid

        return self._edit(view, level, act, "added {result}")

    @timed
    def extend(self, view: View | None, level: int):
        return self._edit(view, level, lambda ann: ann.add_nodes(self._active(view), view.picked), "extended the region")

    @timed
    def shrink(self, view: View | None, level: int):
        return self._edit(view, level, lambda ann: ann.remove_nodes(self._active(view), view.picked), "shrank the region")

    @timed
    def relabel(self, view: View | None, level: int, label: str):
        return self._edit(view, level, lambda ann: ann.relabel(self._active(view), label), "relabelled the region")

    @timed
    def delete(self, view: View | None, level: int):
        def act(ann: Any) -> str:
            rid = self._active(view)
            ann.delete(rid)
            view.active = None
            return rid

        return self._edit(view, level, act, "deleted {result}")

    @timed
    def set_parent(self, view: View | None, level: int, parent: str | None):
        view = self._live(view)
        if view.active is None:
            return (gr.skip(),) * ANNOTATE_OUTPUTS
        target = None if parent in (None, NO_PARENT) else parent
        if annotations_of(view)[view.active].parent == target:
            return (gr.skip(),) * ANNOTATE_OUTPUTS
        return self._edit(view, level, lambda ann: ann.set_parent(view.active, target), "set part-of")

    @timed
    def undo(self, view: View | None, level: int):
        return self._edit(view, level, lambda ann: ann.undo(), "undid: {result}")

    @timed
    def redo(self, view: View | None, level: int):
        return self._edit(view, level, lambda ann: ann.redo(), "redid: {result}")

    @timed
    def on_region_click(self, view: View | None, level: int, evt: gr.SelectData):
        view = self._live(view)
        rid = str(evt.index)
        if rid not in annotations_of(view).regions:
            raise gr.Error(f"no region {rid!r}")
        view.active = rid
        return (*self.render(view, level), annotations_of(view)[rid].label)

    @staticmethod
    def _active(view: View | None) -> str:
        if view is None or view.active is None:
            raise AnnotationError("click a region in the list first", short="no region is being edited")
        return view.active

    # -- files -----------------------------------------------------------------------------
    def export(self, view: View | None, fmt: str) -> str:
        if view is not None and view.expired and fmt == "json" and view.autosave is not None and view.autosave.is_file():
            gr.Warning(f"{EXPIRED} Your autosaved annotations are downloaded instead (import them after segmenting "
                       "the photo again).", title="Session expired")
            return str(view.autosave)
        view = self._live(view)
        try:
            return str(write_export(view.tree, annotations_of(view), fmt, self.folder / view.session))
        except MapsUnavailableError:  # the disk cache removed this photo's label maps
            raise expired_error() from None

    def export_coco(self, view: View | None) -> str:
        return self.export(view, "coco")

    def export_labelstudio(self, view: View | None) -> str:
        return self.export(view, "labelstudio")

    def export_json(self, view: View | None) -> str:
        return self.export(view, "json")

    def import_json(self, view: View | None, level: int, file: Any):
        view = self._live(view)
        path = Path(file if isinstance(file, str) else getattr(file, "name", ""))
        try:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and doc.get("schema") == AUTOSAVE_SCHEMA:  # an autosave file downloaded earlier
                image = doc.get("image") if isinstance(doc.get("image"), dict) else {}
                if image.get("sha1") != view.result.sha1 or doc.get("model") != view.result.model:
                    raise gr.Error(f"{path.name} holds annotations of another photo or model ({image.get('name', '?')}, "
                                   f"{doc.get('model', '?')}); segment that photo with that model first",
                                   title="Cannot import")
                ann: Annotations | None = Annotations.from_dict(doc.get("annotations") or {}, view.tree)
            else:
                ann = read_annotations(doc, view.tree)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise gr.Error(f"{path.name} is not a JSON file", title="Cannot import") from None
        except CastError as e:
            raise gr.Error(str(e), title=e.short) from None
        if ann is None:
            raise gr.Error(f"{path.name} holds no annotations", title="Nothing to import")
        view.annotations, view.picked, view.active = ann, [], None
        self.save(view)
        return self.render(view, level, f"imported {len(ann)} regions from {path.name}")
