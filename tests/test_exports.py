"""COCO and Label Studio exports: masks at the original resolution, part-whole links, formats
that pycocotools and Label Studio's RLE decoder read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cast.annotations import Annotations
from cast.exports import (
    PART_OF,
    EncodedTask,
    coco_dataset,
    coco_record,
    labelstudio_config,
    labelstudio_record,
    ls_rle_decode,
    ls_rle_encode,
    validate_labelstudio,
    write_coco_dataset,
    write_labelstudio,
)
from cast.keys import Level, SegmentKey


@pytest.fixture(scope="module")
def tree(tiny_predictor, photo):
    return tiny_predictor(photo[:120, :160])  # a small photo: Label Studio masks are decoded in Python


def decode(ann) -> np.ndarray:
    seg = ann["segmentation"]
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_coco_of_the_raw_tree_equals_the_label_maps(tree):
    data = coco_dataset([coco_record(tree, "a.jpg"), coco_record(tree, "b.jpg")])
    assert [im["id"] for im in data["images"]] == [1, 2] and data["images"][0] == {"id": 1, "file_name": "a.jpg",
                                                                                    "width": 160, "height": 120}
    anns = [a for a in data["annotations"] if a["image_id"] == 1]
    by_id = {a["id"]: a for a in anns}
    assert len(anns) == len(tree.nodes) and len({a["id"] for a in data["annotations"]}) == 2 * len(tree.nodes)
    names = {c["id"]: c["name"] for c in data["categories"]}
    for lv in (1, 2, 3, 4):
        level = [a for a in anns if a["level"] == lv]
        masks = np.stack([decode(a) for a in level])
        assert (masks.sum(0) == 1).all()  # every level partitions the image
        for a, m in zip(level, masks):
            node = tree.node(a["node"])
            assert np.array_equal(m, tree.label_maps[lv - 1] == node.id)
            assert a["area"] == node.area == m.sum() and a["iscrowd"] == 0
            x0, y0, x1, y1 = node.bbox
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert names[a["category_id"]] == node.predictions[0][0] and a["score"] == pytest.approx(node.predictions[0][1])
            # CVAT / Datumaro read per-annotation values from "attributes" only: the links are there too
            assert a["attributes"] == {k: a[k] for k in ("node", "level", "parent_id") if a[k] is not None}
            if lv == 4:
                assert a["parent_id"] is None
            else:
                parent = by_id[a["parent_id"]]
                assert parent["level"] == lv + 1 and parent["node"] == str(node.parent_key)
                assert not (m & ~decode(parent)).any()  # children inside parents


def test_coco_of_regions_uses_their_labels_and_links(tree):
    ann = Annotations(tree)
    top = tree.nodes_at(4)[0]
    car = ann.create([top.key], "car")
    wheel = ann.create([SegmentKey(Level.L3, top.children[0])], "wheel")
    data = coco_dataset([coco_record(tree, "a.jpg", ann)])
    names = {c["id"]: c["name"] for c in data["categories"]}
    (a_car, a_wheel) = data["annotations"]
    assert (a_car["node"], names[a_car["category_id"]], a_car["parent_id"], a_car["level"]) == (car, "car", None, None)
    assert (a_wheel["node"], a_wheel["parent_id"]) == (wheel, a_car["id"]) and "score" not in a_wheel
    assert a_car["attributes"] == {"node": car} and a_wheel["attributes"] == {"node": wheel, "parent_id": a_car["id"]}
    assert np.array_equal(decode(a_wheel), ann.mask(wheel))


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48), (300, 2)])
def test_label_studio_rle_round_trip(shape):
    rng = np.random.default_rng(shape[0])
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        if mask.size > 20:
            mask[: shape[0] // 2] = True  # long runs too (over the 65,536-word run limit for 300 x 2 x 4 ... and more)
        rle = ls_rle_encode(mask)
        assert all(0 <= v <= 255 for v in rle)
        words = ls_rle_decode(rle)
        assert words.size == mask.size * 4 and np.array_equal(words.reshape(-1, 4), np.repeat(mask.ravel()[:, None] * 255, 4, 1))
        assert np.array_equal(ls_rle_decode(rle, shape), mask)


def test_label_studio_rle_splits_runs_longer_than_its_limit():
    mask = np.ones((200, 200), bool)  # one run of 160,000 words
    assert np.array_equal(ls_rle_decode(ls_rle_encode(mask), mask.shape), mask)
    mask[100, 100] = False
    assert np.array_equal(ls_rle_decode(ls_rle_encode(mask), mask.shape), mask)


def test_label_studio_rle_reads_the_documented_header():
    rle = ls_rle_encode(np.zeros((2, 3), bool))
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    number = int("".join(map(str, bits[:32])), 2)
    word = int("".join(map(str, bits[32:37])), 2) + 1
    sizes = [int("".join(map(str, bits[37 + 4 * i: 41 + 4 * i])), 2) + 1 for i in range(4)]
    assert (number, word, sizes) == (24, 8, [3, 4, 8, 16])


def test_label_studio_tasks_fit_their_config(tree):
    ann = Annotations(tree)
    top = tree.nodes_at(4)[0]
    car = ann.create([top.key], "car")
    ann.create([SegmentKey(Level.L3, top.children[0])], "wheel")
    tasks = [labelstudio_record(tree, "photos/a.jpg"), labelstudio_record(tree, "photos/b.jpg", ann)]
    config = labelstudio_config(tasks)
    assert validate_labelstudio(tasks, config) == []
    assert "<BrushLabels" in config and f'<Relation value="{PART_OF}"' in config and 'value="car"' in config
    raw = tasks[0]["predictions"][0]["result"]
    regions = [r for r in raw if r["type"] == "brushlabels"]
    relations = [r for r in raw if r["type"] == "relation"]
    assert len(regions) == len(tree.nodes) and len(relations) == len(tree.nodes) - tree.num_segments[3]
    node = tree.nodes_at(2)[0]
    region = next(r for r in regions if r["id"] == str(node.key))
    assert (region["original_width"], region["original_height"]) == tree.size
    assert np.array_equal(ls_rle_decode(region["value"]["rle"], (120, 160)), tree.label_maps[1] == node.id)
    assert {"from_id": str(node.key), "to_id": str(node.parent_key)} in [
        {k: r[k] for k in ("from_id", "to_id")} for r in relations]
    annotated = tasks[1]["predictions"][0]["result"]
    assert [r["id"] for r in annotated if r["type"] == "brushlabels"] == [car, "R2"]
    for r in annotated[:2]:  # region masks (unions of level-1 segments) at the original resolution
        assert np.array_equal(ls_rle_decode(r["value"]["rle"], (120, 160)), ann.mask(r["id"]))
    broken = [{**tasks[1], "predictions": [{"result": [dict(annotated[0], from_name="nope")]}]}]
    assert validate_labelstudio(broken, config)


def test_streamed_dataset_files_equal_the_in_memory_ones(tree, tmp_path):
    ann = Annotations(tree)
    ann.create([tree.nodes_at(4)[0].key], "car")
    coco = [coco_record(tree, "a.jpg"), coco_record(tree, "b.jpg", ann), coco_record(tree, "c.jpg")]
    assert write_coco_dataset(tmp_path / "coco.json", iter(coco)) == 3
    assert json.loads((tmp_path / "coco.json").read_text()) == coco_dataset(coco)
    tasks = [labelstudio_record(tree, "a.jpg"), labelstudio_record(tree, "b.jpg", ann)]
    stored = [tasks[0], EncodedTask.loads(EncodedTask.of(tasks[1]).dumps())]  # as the CLI's part files hold them
    assert write_labelstudio(tmp_path / "ls.json", tmp_path / "ls.xml", iter(stored)) == 2
    assert json.loads((tmp_path / "ls.json").read_text()) == tasks
    assert (tmp_path / "ls.xml").read_text() == labelstudio_config(tasks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "ls.json", "ls.xml"]  # no temporary files left
    write_coco_dataset(tmp_path / "empty.json", [])
    assert json.loads((tmp_path / "empty.json").read_text())["annotations"] == []
