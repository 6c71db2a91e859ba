"""The Annotate tab's handlers without a browser: click -> pick, regions, part-of, undo / redo,
exports and import of a saved hierarchy.json (the browser flow is in test_browser.py)."""

from __future__ import annotations

import json
import zipfile
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from app.annotate import NO_PARENT, AnnotateCallbacks
from app.view import View
from cast.keys import Level


@pytest.fixture(scope="module")
def result(explorer, uploads):
    return explorer.segment(uploads["wide.jpg"], "bundled")


@pytest.fixture()
def callbacks(explorer):
    return AnnotateCallbacks(explorer)


def centre_of(view: View, level: int, node_id: int) -> SimpleNamespace:
    """A click event (``evt.index`` = display x, y) on a pixel of the segment."""
    ys, xs = np.nonzero(view.maps[Level(level)] == node_id)
    i = len(ys) // 2
    return SimpleNamespace(index=(int(xs[i]), int(ys[i])))


def two_parts(view: View) -> tuple[int, int, int]:
    for n in view.tree.nodes_at(4):
        if len(n.children) >= 2:
            return n.id, n.children[0], n.children[1]
    pytest.skip("no level-4 segment with two parts")


def test_click_shift_click_label_undo_redo(callbacks, result):
    view = View.of(result)
    whole, a, b = two_parts(view)
    out = callbacks.on_click(view, 3, False, centre_of(view, 3, a))
    assert [str(k) for k in view.picked] == [f"L3-{a}"]
    out = callbacks.on_click(view, 3, True, centre_of(view, 3, b))  # shift-click adds
    assert [str(k) for k in view.picked] == [f"L3-{a}", f"L3-{b}"]
    assert "2 picked" in out[3]

    out = callbacks.add_region(view, 3, "wheel")
    ann = view.annotations
    assert len(ann) == 1 and view.picked == [] and view.active in ann.regions
    assert "wheel" in out[2] and out[6].startswith("added")
    region = ann[view.active]
    level3 = view.tree.label_maps[2]  # list index = level - 1, at the original resolution
    assert np.array_equal(ann.mask(region.id), (level3 == a) | (level3 == b))

    callbacks.undo(view, 3)
    assert len(view.annotations) == 0
    out = callbacks.redo(view, 3)
    assert len(view.annotations) == 1 and "wheel" in out[2]

    # shift-click drops a picked one; an impossible edit is a warning, not a crash, and changes nothing
    callbacks.on_click(view, 3, False, centre_of(view, 3, a))
    callbacks.on_click(view, 3, True, centre_of(view, 3, a))
    assert view.picked == []
    view.active = None
    out = callbacks.relabel(view, 3, "car")
    assert out[6].startswith("⚠") and view.annotations.labels == ["wheel"]


def test_parts_parent_choices_and_delete(callbacks, result):
    view = View.of(result)
    whole, a, b = two_parts(view)
    callbacks.on_click(view, 4, False, centre_of(view, 4, whole))
    callbacks.add_region(view, 4, "car")
    car = view.active
    callbacks.on_click(view, 3, False, centre_of(view, 3, a))
    out = callbacks.add_region(view, 3, "door")
    door = view.active
    assert view.annotations[door].parent == car  # picked inside the car: its part
    choices = [value for _, value in out[5]["choices"]]
    assert choices == [NO_PARENT, car] and out[5]["value"] == car
    callbacks.on_click(view, 3, False, centre_of(view, 3, b))
    wheel = (callbacks.add_region(view, 3, "wheel"), view.active)[1]

    # refused: a top-level door would overlap the car; a door inside the wheel lies outside it
    for target in (NO_PARENT, wheel):
        view.active = door
        out = callbacks.set_parent(view, 3, target)
        assert out[6].startswith("⚠") and view.annotations[door].parent == car

    view.active = car
    callbacks.delete(view, 4)  # its parts move up
    assert set(view.annotations.regions) == {door, wheel}
    assert all(r.parent is None for r in view.annotations.regions.values())
    callbacks.undo(view, 4)
    assert view.annotations[door].parent == car and view.annotations[wheel].parent == car


def test_exports_and_import_continue_the_work(callbacks, result, tmp_path):
    view = View.of(result)
    whole, a, b = two_parts(view)
    callbacks.on_click(view, 4, False, centre_of(view, 4, whole))
    callbacks.add_region(view, 4, "car")
    callbacks.on_click(view, 3, False, centre_of(view, 3, a))
    callbacks.add_region(view, 3, "wheel")

    coco = json.loads(open(callbacks.export_coco(view)).read())
    tree = view.tree
    h, w = tree.label_maps[0].shape
    assert coco["images"][0]["height"] == h and coco["images"][0]["width"] == w
    by_node = {ann["node"]: ann for ann in coco["annotations"]}
    car = by_node[[r.id for r in view.annotations.regions.values() if r.label == "car"][0]]
    wheel = by_node[[r.id for r in view.annotations.regions.values() if r.label == "wheel"][0]]
    assert wheel["parent_id"] == car["id"] and car["parent_id"] is None
    assert np.array_equal(mask_utils.decode(car["segmentation"]).astype(bool), tree.label_maps[3] == whole)

    with zipfile.ZipFile(callbacks.export_labelstudio(view)) as z:
        assert {"labelstudio.json", "labelstudio.xml", "README.txt"} <= set(z.namelist())
        tasks = json.loads(z.read("labelstudio.json"))
    results = tasks[0]["predictions"][0]["result"]
    assert {r["value"]["brushlabels"][0] for r in results if r["type"] == "brushlabels"} == {"car", "wheel"}

    saved = callbacks.export_json(view)
    fresh = View.of(result)
    out = callbacks.import_json(fresh, 3, saved)
    assert fresh.annotations.to_dict() == view.annotations.to_dict() and "imported 2 regions" in out[6]


def test_import_refuses_other_files(callbacks, result, explorer, uploads, tmp_path):
    view = View.of(result)
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(gr.Error, match="not a JSON file"):
        callbacks.import_json(view, 3, str(junk))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(view.tree.to_dict()))
    with pytest.raises(gr.Error, match="no annotations"):
        callbacks.import_json(view, 3, str(bare))

    other = View.of(explorer.segment(uploads["good.jpg"], "bundled"))
    whole, _, _ = two_parts(other)
    callbacks.on_click(other, 4, False, centre_of(other, 4, whole))
    callbacks.add_region(other, 4, "thing")
    with pytest.raises(gr.Error):  # annotations of another photo's tree
        callbacks.import_json(view, 3, callbacks.export_json(other))
    assert view.annotations is None or len(view.annotations) == 0


def test_annotate_overlay_colours_wholes_and_their_parts(result):
    from app.render import annotate_overlay, region_colour
    from cast.annotations import Annotations

    view = View.of(result)
    whole, a, _ = two_parts(view)
    ann = view.annotations = Annotations(view.tree)
    car = ann.create([f"L4-{whole}"], "car")
    wheel = ann.create([f"L3-{a}"], "wheel")  # a part: laid over its whole
    opacity = 0.5
    got = annotate_overlay(view, 4, opacity).astype(np.float32)
    photo = view.result.photo.astype(np.float32)
    c_car, c_wheel = (np.asarray(region_colour(ann, r), np.float32) for r in (car, wheel))
    l4, l3 = view.maps[Level.L4], view.maps[Level.L3]
    edges = np.zeros(l4.shape, bool)  # level-4 boundaries (white) and the region outlines are drawn over
    edges[:, :-1] |= l4[:, :-1] != l4[:, 1:]
    edges[:-1, :] |= l4[:-1, :] != l4[1:, :]
    edges |= np.pad(edges, 4)[8:, 4:-4] | np.pad(edges, 4)[:-8, 4:-4] | np.pad(edges, 4)[4:-4, 8:] | np.pad(edges, 4)[4:-4, :-8]
    only_whole, part, outside = (l4 == whole) & (l3 != a) & ~edges, (l3 == a) & ~edges, (l4 != whole) & ~edges
    want_whole = photo * (1 - opacity) + c_car * opacity
    assert np.abs(got[only_whole] - want_whole[only_whole]).max() <= 1
    want_part = want_whole * (1 - opacity) + c_wheel * opacity  # blended over the whole's colour
    assert np.abs(got[part] - want_part[part]).max() <= 1
    assert np.array_equal(got[outside], photo[outside])  # the rest is the photo
