"""Unit tests of the app's tree handling, pixel -> segment lookup and drawing (no server)."""

from __future__ import annotations

import colorsys
import io
import re

import numpy as np
import pytest
from PIL import Image

from app.render import (
    SELECT_COLOUR,
    OverlayStyle,
    boundaries,
    colours,
    icicle_html,
    icicle_layout,
    level_predictions_html,
    overlay,
    panel_html,
)
from app.view import View, nearest_resize
from cast.keys import ROOT, Level, SegmentKey


@pytest.fixture(scope="module")
def result(explorer, uploads):
    res = explorer.segment(uploads["wide.jpg"], "bundled")
    assert res.photo.shape[:2] == (461, 768)  # shown smaller than the 1000x600 original
    return res


@pytest.fixture()
def view(result):
    return View.of(result)


def test_nearest_resize_keeps_ids_and_blocks():
    labels = np.array([[0, 1], [2, 3]])
    big = nearest_resize(labels, (4, 6))
    assert big.shape == (6, 4) and set(np.unique(big)) == {0, 1, 2, 3}
    assert (big[:3, :2] == 0).all() and (big[3:, 2:] == 3).all()


def test_pixel_lookup_matches_the_tree_at_every_level(view, result):
    tree = result.tree
    w, h = view.size
    W, H = tree.size
    rng = np.random.default_rng(0)
    for x, y in rng.integers(0, [w, h], size=(60, 2)):
        for level in (1, 2, 3, 4):
            key = view.key_at(x, y, level)
            # the display pixel maps to original pixel (x * W // w, y * H // h) by the same nearest rule
            assert key == SegmentKey(Level(level), tree.segment_at(x * W // w, y * H // h, level))
        # nesting: the level-l segment under a pixel is the parent of the level-(l-1) one
        path = tree.path_keys(view.key_at(x, y, 1))
        assert path == [ROOT] + [view.key_at(x, y, lv) for lv in (4, 3, 2, 1)]
        sp_key = view.key_at(x, y, Level.SUPERPIXEL)
        assert sp_key.is_superpixel and tree.path_keys(sp_key)[-2] == path[-1]
        assert view.key_at(x, y, Level.WHOLE) == ROOT


def test_pixel_lookup_clamps_and_masks_cover_the_image(view):
    w, h = view.size
    assert view.key_at(-5, -5, 1) == view.key_at(0, 0, 1)
    assert view.key_at(w + 10, h + 10, 1) == view.key_at(w - 1, h - 1, 1)
    for level in (1, 2, 3, 4):
        keys = {n.key for n in view.tree.nodes_at(level)}
        total = sum(view.mask(k).sum() for k in keys)
        assert total == w * h  # segments of a level partition the image
    assert view.mask(ROOT).all()


def test_segment_info_of_nodes_root_and_superpixels(view):
    tree = view.tree
    node = tree.nodes_at(2)[0]
    info = view.info(node.key)
    assert info.level == 2 and str(info.parent) == f"L3-{node.parent}"
    assert [str(c) for c in info.children] == [f"L1-{c}" for c in node.children] and info.children
    assert info.area_fraction == pytest.approx(node.area / (tree.size[0] * tree.size[1]))
    assert info.path[0] == ROOT and info.path[-1] == node.key
    root = view.info(ROOT)
    assert root.parent is None and root.children == [n.key for n in tree.nodes_at(4)] and root.area_fraction == 1.0
    sp = view.info(SegmentKey.parse("S-0"))
    assert sp.level == Level.SUPERPIXEL and str(sp.parent) == f"L1-{tree.superpixel_to_level1[0]}"
    with pytest.raises(KeyError):
        view.info(SegmentKey.parse("L2-999"))
    with pytest.raises(KeyError):
        view.info(SegmentKey(Level.SUPERPIXEL, tree.num_superpixels))


def test_icicle_layout_nests_children_inside_parents(result):
    tree = result.tree
    for equal in (False, True):
        layout = icicle_layout(tree, equal_width=equal)
        assert len(layout) == len(tree.nodes) + 1 and layout[ROOT] == (0.0, 1.0, 0)
        leaves = sorted((layout[n.key] for n in tree.nodes_at(1)), key=lambda t: t[0])
        assert leaves[0][0] == pytest.approx(0) and leaves[-1][1] == pytest.approx(1)
        for a, b in zip(leaves, leaves[1:]):
            assert a[1] == pytest.approx(b[0])  # no gaps, no overlaps
        widths = [x1 - x0 for x0, x1, _ in leaves]
        n = len(leaves)
        if equal:
            assert np.allclose(widths, 1 / n)
        else:
            assert min(widths) >= 0.35 / n / 1.5  # minimum share survives renormalisation
        for node in tree.nodes:
            if node.level == 1:
                continue
            x0, x1, row = layout[node.key]
            kids = [layout[SegmentKey(Level(node.level - 1), c)] for c in node.children]
            assert min(k[0] for k in kids) == pytest.approx(x0) and max(k[1] for k in kids) == pytest.approx(x1)
            assert all(k[2] == row + 1 for k in kids)


def test_area_widths_follow_area(result):
    tree = result.tree
    layout = icicle_layout(tree, min_share=0.0)
    total = sum(n.area for n in tree.nodes_at(1))
    for node in tree.nodes_at(4):
        x0, x1, _ = layout[node.key]
        assert x1 - x0 == pytest.approx(node.area / total, abs=1e-9)


def _lightness(rgb) -> float:
    return colorsys.rgb_to_hls(*(np.asarray(rgb) / 255.0))[1]


def test_colours_share_a_hue_per_whole_and_lighten_with_depth(result):
    tree = result.tree
    table = colours(tree)
    assert {lv: len(table[lv]) for lv in (1, 2, 3, 4)} == {lv: max(len(tree.nodes_at(lv)), 1) for lv in (1, 2, 3, 4)}
    mean_l = {lv: np.mean([_lightness(c) for c in table[lv]]) for lv in (1, 2, 3, 4)}
    assert mean_l[1] > mean_l[2] > mean_l[3] > mean_l[4]
    tops = [tuple(c) for c in table[4]]
    assert len(set(tops)) == len(tops)  # every whole its own colour
    for node in tree.nodes_at(3):  # children stay near their parent's hue
        hp = colorsys.rgb_to_hls(*(table[4][node.parent] / 255.0))[0]
        hc = colorsys.rgb_to_hls(*(table[3][node.id] / 255.0))[0]
        assert min(abs(hp - hc), 1 - abs(hp - hc)) < 0.05


def test_overlay_draws_boundaries_selection_and_dimming(view):
    table = colours(view.tree)
    photo = view.result.photo
    key = view.tree.nodes_at(3)[0].key
    mask = view.mask(key)
    plain = overlay(photo, view.maps, table, OverlayStyle(level=3, opacity=0.0, show_boundaries=False))
    assert np.array_equal(plain, photo)  # opacity 0, no boundaries: the photo itself
    edged = overlay(photo, view.maps, table, OverlayStyle(level=3, opacity=0.0, show_boundaries=True))
    edge = boundaries(view.maps[3])
    assert edge.any() and (edged[edge] == 255).all() and np.array_equal(edged[~edge], photo[~edge])
    sel = overlay(photo, view.maps, table, OverlayStyle(level=1, opacity=0.5, dim_rest=True), mask)
    assert (sel[mask] == SELECT_COLOUR).all(axis=1).any()
    undimmed = overlay(photo, view.maps, table, OverlayStyle(level=1, opacity=0.5, show_boundaries=False), mask)
    dimmed = overlay(photo, view.maps, table, OverlayStyle(level=1, opacity=0.5, show_boundaries=False, dim_rest=True), mask)
    assert dimmed[~mask].mean() < 0.5 * undimmed[~mask].mean()


def test_icicle_html_has_every_node_and_marks_the_path(result):
    tree = result.tree
    leaf = tree.nodes_at(1)[-1].key
    out = icicle_html(tree, leaf)
    keys = re.findall(r'<rect data-node="([^"]+)"', out)
    assert sorted(keys) == sorted(str(k) for k in [n.key for n in tree.nodes] + [ROOT])
    path = tree.path_keys(leaf)
    for key in path:
        assert re.search(rf'<g class="node on-path[^"]*" data-node="{key}"', out)
    assert re.search(rf'<g class="node on-path selected" data-node="{leaf}"', out)
    crumbs = re.findall(r'class="crumb[^"]*" data-node="([^"]+)"', out)
    assert crumbs == [str(k) for k in path]
    # a superpixel selection marks its level-1 segment
    sp_out = icicle_html(tree, SegmentKey(Level.SUPERPIXEL, 0))
    assert f'class="node on-path selected" data-node="L1-{tree.superpixel_to_level1[0]}"' in sp_out


def test_panels_say_what_the_model_says(explorer, uploads):
    view = View.of(explorer.segment(uploads["wide.jpg"], "bundled_flat"))  # a flat head reads every level
    table = colours(view.tree)
    key = view.tree.nodes_at(4)[0].key
    info = view.info(key)
    html_out = panel_html(info, table, has_head=True, pending=True)
    assert f"Segment {key}" in html_out and "recognising" in html_out and info.token_predictions
    assert info.token_predictions[0][0] in html_out
    assert "no class predictions" in panel_html(info, table, has_head=False)
    preds = level_predictions_html(view.tree)
    assert preds.count('class="level-col"') == 4 and "<polyline" in preds


def test_examples_are_precomputed_and_cached(explorer, uploads, tmp_path):
    first = explorer.segment(uploads["good.jpg"], "bundled")
    copy = tmp_path / "same-bytes.jpg"
    copy.write_bytes(uploads["good.jpg"].read_bytes())
    assert explorer.segment(copy, "bundled") is first  # same content, same model: no new forward pass
    before = set(explorer._results.keys())
    explorer.precompute([uploads["cmyk.jpg"]])
    (new_key,) = set(explorer._results.keys()) - before  # the example is in the cache before anyone asks
    precomputed = explorer._results.get(new_key)
    assert explorer.segment(uploads["cmyk.jpg"], "bundled") is precomputed
    assert precomputed.tree.image_notes == ("CMYK image converted to 8-bit RGB",)


def test_downloads_hold_the_tree_and_label_maps(result):
    import json
    import zipfile

    d = json.loads(result.json_path.read_text())
    assert d["schema"] == "cast-hierarchy" and len(d["nodes"]) == len(result.tree.nodes)
    with zipfile.ZipFile(result.labels_path) as z:
        names = set(z.namelist())
        assert {"level1.png", "level4.png", "superpixels.png"} <= names
        level4 = np.asarray(Image.open(io.BytesIO(z.read("level4.png"))))
    assert np.array_equal(level4, result.tree.label_maps[3])


def test_recognise_caches_and_updates_the_json(explorer, result):
    import json

    key = result.tree.nodes_at(2)[0].key
    preds = explorer.recognise(result, key)
    # the answer is the classifier's on the working image greyed outside the segment
    segmenter = explorer.models.segmenter(result.model)
    masked = result.tree.masked_images(int(key.level), [key.id], grey=128)
    probs, _ = segmenter.classify_embed(masked)
    top = np.argsort(-probs[0], kind="stable")[:5]
    assert [lbl for lbl, _ in preds] == [segmenter.info.class_names[i] for i in top]
    assert np.allclose([p for _, p in preds], probs[0][top], atol=1e-6)
    assert explorer.recognise(result, key) is preds  # cached in the tree
    saved = json.loads(result.json_path.read_text())["segment_predictions"]
    assert [lbl for lbl, _ in saved[str(key)]] == [lbl for lbl, _ in preds]
    assert explorer.recognise(result, ROOT) is None  # only tree segments are recognised on their own


def test_fast_png_encoder_round_trips(photo):
    from app.render import encode_png

    rng = np.random.default_rng(0)
    for img in (photo[:97, :131], rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), np.zeros((1, 1, 3), np.uint8)):
        decoded = Image.open(io.BytesIO(encode_png(img)))
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), img)


def test_outline_matches_a_full_image_erosion():
    from app.render import _outline

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = np.zeros((40, 50), bool)
        y, x = rng.integers(0, 35), rng.integers(0, 45)
        mask[y: y + rng.integers(1, 20), x: x + rng.integers(1, 20)] = True
        mask &= rng.random(mask.shape) > 0.1
        inner = mask.copy()
        for _ in range(3):  # erosion by 4-neighbourhood, outside the image = outside the mask
            p = np.pad(inner, 1)
            inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        assert np.array_equal(_outline(mask, 3), mask & ~inner)
