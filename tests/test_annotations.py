"""The annotation layer: regions of tree nodes, part-of links, invariants, undo/redo, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cast
from cast.annotations import AnnotationError, Annotations, read_annotations
from cast.hierarchy import SCHEMA_VERSION
from cast.keys import Level, SegmentKey


@pytest.fixture(scope="module")
def tree(tiny_predictor, photo):
    t = tiny_predictor(photo[:200, :300])
    assert t.num_segments[3] >= 2 and all(len(n.children) for n in t.nodes_at(4))
    return t


def whole_with_two_parts(tree):
    """A level-4 segment with at least two children, and two of its children."""
    for n in tree.nodes_at(4):
        if len(n.children) >= 2:
            return n.key, SegmentKey(Level.L3, n.children[0]), SegmentKey(Level.L3, n.children[1])
    pytest.skip("no level-4 segment with two parts")


def test_regions_parts_and_masks(tree):
    whole, a, b = whole_with_two_parts(tree)
    ann = Annotations(tree)
    car = ann.create([whole], "car")
    wheel = ann.create([a], "wheel")  # inside the car: its part by default
    assert ann[wheel].parent == car and ann.depth(wheel) == 1 and ann.children(car)[0].id == wheel
    assert ann.containing([a]).id == wheel
    mask = ann.mask(car)
    assert mask.sum() == tree.node(whole).area and np.array_equal(mask, tree.label_maps[3] == whole.id)
    assert not (ann.mask(wheel) & ~mask).any()  # a part lies inside its whole
    assert ann.labels == ["car", "wheel"]
    # the same region named twice over: a node and its descendants collapse to the node
    dup = Annotations(tree).create([whole, a, *(SegmentKey(Level.L2, c) for c in tree.node(a).children)], "x")
    assert dup == "R1"


def test_merge_split_relabel_parent_delete(tree):
    whole, a, b = whole_with_two_parts(tree)
    ann = Annotations(tree)
    r = ann.create([a], "part")
    ann.add_nodes(r, [b])  # merge two siblings
    assert ann[r].nodes == {a, b} and ann.leaves(r) == ann.leaves([a]) | ann.leaves([b])
    child = SegmentKey(Level.L2, tree.node(a).children[0])
    ann.remove_nodes(r, [child])  # split: a is replaced by its other children
    assert a not in ann[r].nodes and child not in ann[r].nodes
    assert ann.leaves(r) == (ann.leaves([a]) | ann.leaves([b])) - ann.leaves([child])
    ann.relabel(r, "wheels")
    assert ann[r].label == "wheels"
    top = ann.create([whole], "car")  # a whole drawn after its part adopts it
    assert ann[r].parent == top
    with pytest.raises(AnnotationError, match="overlap"):
        ann.set_parent(r, None)  # beside the car, the wheels would overlap it
    hub = ann.create([b], "hub")  # inside the wheels: part of them
    assert ann[hub].parent == r
    with pytest.raises(AnnotationError, match="overlap"):
        ann.set_parent(hub, top)  # beside the wheels it lies on, the hub would overlap them
    assert len(ann) == 3
    ann.delete(r)  # its parts move up to its parent
    assert r not in ann.regions and ann[hub].parent == top


def test_invariants_are_refused_and_nothing_changes(tree):
    whole, a, b = whole_with_two_parts(tree)
    other = next(n.key for n in tree.nodes_at(4) if n.key != whole)
    ann = Annotations(tree)
    car = ann.create([whole], "car")
    part = ann.create([a], "door")
    stray = ann.create([other], "tree")
    before = ann.to_dict()
    with pytest.raises(AnnotationError, match="inside its whole"):
        ann.set_parent(stray, car)  # a part outside its whole
    with pytest.raises(AnnotationError, match="part of itself"):
        ann.set_parent(car, part)
    with pytest.raises(AnnotationError, match="overlap"):
        ann.create([a], "door again", parent=car)  # two parts of the car on the same pixels
    with pytest.raises(AnnotationError, match="inside its whole"):
        ann.add_nodes(part, [other])  # growing a part out of its whole
    with pytest.raises(AnnotationError, match="label"):
        ann.create([b], "   ")
    with pytest.raises(AnnotationError, match="not a segment"):
        ann.create(["L3-999"], "ghost")
    with pytest.raises(AnnotationError, match="empty"):
        ann.remove_nodes(part, [a])
    assert ann.to_dict() == before
    lenient = Annotations(tree, allow_overlap=True)
    lenient.create([whole], "car")
    lenient.create([a], "door")
    lenient.create([a], "door (occluded)")  # allowed when asked for
    assert len(lenient) == 3


def test_undo_redo(tree):
    whole, a, b = whole_with_two_parts(tree)
    ann = Annotations(tree)
    r = ann.create([whole], "car")
    ann.relabel(r, "truck")
    p = ann.create([a], "wheel")
    assert ann.undo() == f"create {p} (wheel)" and p not in ann.regions
    assert ann.undo() == f"relabel {r}" and ann[r].label == "car"
    assert ann.redo() == f"relabel {r}" and ann[r].label == "truck"
    ann.create([b], "door")  # a new edit clears what could be redone
    assert not ann.can_redo and ann.can_undo
    with pytest.raises(AnnotationError, match="nothing to redo"):
        ann.redo()
    while ann.can_undo:
        ann.undo()
    assert len(ann) == 0


def test_saved_in_hierarchy_json_and_read_back(tree, tiny_predictor, photo):
    whole, a, _ = whole_with_two_parts(tree)
    ann = Annotations(tree)
    car = ann.create([whole], "car")
    ann.create([a], "wheel")
    tree.annotations = ann
    try:
        d = json.loads(tree.to_json())
    finally:
        tree.annotations = None
    assert d["version"] == SCHEMA_VERSION == 3 and [r["label"] for r in d["annotations"]["regions"]] == ["car", "wheel"]
    again = read_annotations(d, tiny_predictor(photo[:200, :300]))  # the same photo segmented again
    assert again.to_dict() == ann.to_dict() and again.create([SegmentKey(Level.L1, 0)], "x").startswith("R")
    old = {**d, "version": 1}
    old.pop("annotations")
    assert read_annotations(old, tree) is None  # files of version 1 have none
    v2 = {k: v for k, v in d.items() if k != "taxonomy"}  # version 2: no taxonomy entries, read as before
    v2["version"], v2["nodes"] = 2, [{k: v for k, v in n.items() if k != "taxonomy_predictions"} for n in d["nodes"]]
    assert read_annotations(v2, tree).to_dict() == ann.to_dict()
    other = tiny_predictor(photo[200:, 100:])
    with pytest.raises(AnnotationError, match="another tree"):
        read_annotations(d, other)
    with pytest.raises(AnnotationError, match="hierarchy.json"):
        read_annotations({"schema": "something"}, tree)
    bad = json.loads(json.dumps(d))
    bad["annotations"]["regions"][1]["parent"] = "R77"
    with pytest.raises(AnnotationError, match="does not exist"):
        read_annotations(bad, tree)
    assert car == "R1"


def test_errors_are_cast_errors_with_a_short_text(tree):
    with pytest.raises(cast.CastError) as e:
        Annotations(tree).undo()
    assert e.value.short == "nothing to undo"
