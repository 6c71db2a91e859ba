"""The web app's panels for a hierarchical (H-CAST) model: the per-level panel names the taxonomy level
each tree level answers, shows the heads' path and marks a path they disagree on; the segment panel
shows the segment's own taxonomy prediction."""

from __future__ import annotations

import dataclasses
import re

import pytest
import timm
import torch

import cast
from app.render import level_predictions_html, panel_html, view_colours
from app.view import View
from cast.keys import Level, SegmentKey


@pytest.fixture(scope="module")
def hcast_tree(photo):
    torch.manual_seed(0)
    model = timm.create_model("hcast_tiny", img_size=96, level_classes=(6, 3)).eval()
    taxonomy = cast.Taxonomy(("class", "group"), (("car", "bus", "tree", "rose", "cup", "jug"),
                                                  ("vehicles", "plants", "kitchen")), ((0, 0, 1, 1, 2, 2),))
    model.info = model.default_info().with_(taxonomy=taxonomy, class_names=list(taxonomy.classes[0]))
    return cast.load_segmenter(model, refine=False)(photo[:200, :300])


def test_the_level_panel_names_each_levels_taxonomy_level_and_checks_the_path(hcast_tree):
    t = hcast_tree.taxonomy
    page = level_predictions_html(hcast_tree)
    counts = hcast_tree.num_segments
    for lv, name in ((2, "class"), (3, "group")):  # 2 levels: stages 3 and 4 read tree levels 2 and 3
        top = t.level_at(lv).predictions[0][0]
        assert f"level {lv} · {counts[lv - 1]} segments · {name}: {top}" in page
    assert f"level 1 · {counts[0]} segments</h5><p class=\"muted\">no head reads this level" in page
    assert f"level 4 · {counts[3]} segments</h5><p class=\"muted\">no head reads this level" in page
    assert re.search(r"heads say \(coarse → fine\): <span class=\"step\">[^<]+</span><span class=\"step\">[^<]+</span>", page)
    agree = dataclasses.replace(t, argmax_path=["car", "vehicles"], consistent_path=["car", "vehicles"], heads_agree=True)
    disagree = dataclasses.replace(t, argmax_path=["car", "plants"], consistent_path=["rose", "plants"], heads_agree=False)
    for state, mark in ((agree, "the heads agree"), (disagree, "the heads disagree")):
        hcast_tree.taxonomy = state
        try:
            page = level_predictions_html(hcast_tree)
        finally:
            hcast_tree.taxonomy = t
        assert mark in page and ("Consistent path: plants → rose" in page) == (state is disagree)


def test_the_segment_panel_shows_the_segments_own_taxonomy_prediction(hcast_tree, photo, tmp_path):
    from app.service import Result

    view = View.of(Result(tree=hcast_tree, model="hcast", photo=photo[:200, :300], folder=tmp_path))
    node = hcast_tree.nodes_at(3)[0]
    info = view.info(SegmentKey(Level.L3, node.id))
    assert info.taxonomy_level == "group" and info.taxonomy_predictions == node.taxonomy_predictions
    table = view_colours(view)
    panel = panel_html(info, table, True)
    top = node.taxonomy_predictions[0][0]
    assert "group: model says (from the segment's own token, through this level's head)" in panel and top in panel
    assert "no classifier" not in panel
    whole = panel_html(view.info(SegmentKey(Level.WHOLE)), table, True)
    assert "class: model says (from the image's finest head)" in whole
    assert hcast_tree.taxonomy.levels[0].predictions[0][0] in whole
    fine = view.info(SegmentKey(Level.L1, 0))  # level 1: no head reads it
    assert fine.taxonomy_predictions is None and "No taxonomy head reads this level" in panel_html(fine, table, True)


def test_the_tree_names_segments_no_head_reads_by_their_key(hcast_tree):
    """Level 1 and 4 segments of an H-CAST tree have no class: the icicle labels them with their key;
    the others with their own level's prediction."""
    from app.render import icicle_html

    page = icicle_html(hcast_tree, SegmentKey(Level.L1, 0))
    fine = hcast_tree.nodes_at(1)[0]
    assert fine.predictions == [] or not fine.predictions
    assert page.count("<rect data-node=") == 1 + sum(hcast_tree.num_segments)
    assert f'data-node="{fine.key}"' in page and 'class="node on-path selected" data-node="L1-0"' in page
    mid = hcast_tree.nodes_at(2)[0]  # the class head reads level 2: its segments are named by their own prediction
    assert f"{mid.key}: " in page and f", {mid.taxonomy_predictions[0][0]}</title>" in page
