"""Exports that annotation tools read: COCO instances (CVAT, pycocotools) and Label Studio
pre-annotations (tasks + labeling config), from trees and their annotations, at the original
resolution.

What is exported per image: the annotated regions when there are any, else the raw tree (every
segment of all four levels; each level partitions the image). Either way each annotation carries
its place in the part-whole hierarchy (PACO-style parent links): ``node`` (the segment key such as
``"L2-5"``, or the region id such as ``"R3"``) and ``parent_id`` (the annotation id of the segment
or region it is part of; null at the top). COCO annotations repeat ``node``, ``level`` and
``parent_id`` (when not null) in an ``attributes`` object, the one place where CVAT's importer
(Datumaro) keeps per-annotation values.

Exports are assembled from per-image *records* (:func:`coco_record`, :func:`labelstudio_record`)
that hold no global ids, so a dataset split into shards and merged gives the same file as one run.

Label Studio's brush masks are stored in its run-length format (:func:`ls_rle_encode`): the
``@thi.ng/rle-pack`` bit stream of the mask as a flattened RGBA image (every pixel's value, 0 or
255, four times). The stream is a 32-bit word count, the word size minus one (5 bits), four run
size classes minus one (4 bits each; 3, 4, 8 and 16 bits here), then records: a flag bit (1: one
value repeated, 0: a list of values), a 2-bit size class, the count minus one in that class's
bits, and the value(s) in the word size. Bits are written most significant first.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .annotations import Annotations
from .hierarchy import Hierarchy

__all__ = [
    "coco_record", "coco_dataset", "labelstudio_record", "labelstudio_tasks", "labelstudio_config",
    "ls_rle_encode", "ls_rle_decode", "coco_rle", "validate_labelstudio", "write_json",
    "write_text", "write_coco_dataset", "write_labelstudio", "EncodedTask", "LS_FROM_NAME", "LS_TO_NAME",
    "PART_OF", "GRANULARITY", "LabelStudioTarget",
]

LS_FROM_NAME, LS_TO_NAME = "label", "image"  # names in the labeling config
PART_OF = "part-of"  # the relation label of part-whole links
SEGMENT_LABEL = "segment"  # category of raw segments of models without a classifier
GRANULARITY = {4: "whole", 3: "part", 2: "sub-part", 1: "fine part"}  # what each tree level is to an annotator
_RLE_SIZES = (3, 4, 8, 16)  # run size classes, in bits (Label Studio's)


# ---------------------------------------------------------------------------------------------
# What an image exports: a flat list of masks with hierarchy links
# ---------------------------------------------------------------------------------------------


class _Runs:
    """A label map as runs of equal labels in one pixel order: ``"C"`` row by row (Label
    Studio's order), ``"F"`` column by column (COCO's). A mask of some labels is then a few
    operations on the runs, never a full-resolution array."""

    def __init__(self, labels: np.ndarray, order: str) -> None:
        flat = labels.ravel(order=order)
        starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
        self.labels = flat[starts]
        self.lengths = np.diff(np.append(starts, flat.size))
        self.size = flat.size

    def mask(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(on, lengths)``: the runs of the mask of pixels labelled one of ``ids``, neighbours of
        equal value merged (alternating; the first run may be on or off)."""
        on = np.isin(self.labels, np.asarray(ids, self.labels.dtype))
        first = np.flatnonzero(np.concatenate([[True], on[1:] != on[:-1]]))
        return on[first], np.add.reduceat(self.lengths, first)


class _Masks:
    """One image's exported items: ``{"node", "parent", "label", "level", "score", "depth",
    "ids", "map"}`` for each region (when annotated; ``ids`` = its level-1 segments) or each tree
    segment (``map`` = its level's index), wholes before their parts; ``parent`` is the ``node``
    of the enclosing item. The label maps' runs are made once per order and level."""

    def __init__(self, tree: Hierarchy, annotations: Annotations | None) -> None:
        self.tree, self._runs = tree, {}
        ann = annotations if annotations is not None else tree.annotations
        self.items: list[dict[str, Any]] = []
        if ann is not None and len(ann):
            for r in ann.regions.values():
                self.items.append({"node": r.id, "parent": r.parent, "label": r.label, "level": None,
                                   "depth": ann.depth(r.id), "score": None, "ids": sorted(ann.leaves(r.id)), "map": 0})
            return
        for node in sorted(tree.nodes, key=lambda n: (-n.level, n.id)):
            top = node.own_predictions[0] if node.own_predictions else None
            self.items.append({"node": str(node.key), "parent": None if node.parent is None else str(node.parent_key),
                               "label": top[0] if top else SEGMENT_LABEL, "level": node.level, "depth": 4 - node.level,
                               "score": None if top is None else round(float(top[1]), 6), "ids": [node.id],
                               "map": node.level - 1})

    def runs(self, item: dict[str, Any], order: str) -> tuple[np.ndarray, np.ndarray]:
        key = (order, item["map"])
        if key not in self._runs:
            self._runs[key] = _Runs(self.tree.label_map(item["map"] + 1), order)
        return self._runs[key].mask(item["ids"])


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------


def _coco_rle_of_runs(on: np.ndarray, lengths: np.ndarray, h: int, w: int) -> dict[str, Any]:
    """pycocotools' compressed RLE from column-major runs (COCO's counts start with a 0-run)."""
    from pycocotools import mask as mask_utils

    counts = lengths.tolist() if not on[0] else [0, *lengths.tolist()]
    return mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """pycocotools' compressed RLE of a ``[H, W]`` bool mask, JSON-ready (``counts`` as text)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_record(tree: Hierarchy, file_name: str, annotations: Annotations | None = None) -> dict[str, Any]:
    """One image's COCO entries without global ids (assembled by :func:`coco_dataset`)."""
    from pycocotools import mask as mask_utils

    w, h = tree.size
    masks, anns = _Masks(tree, annotations), []
    for it in masks.items:
        coded = _coco_rle_of_runs(*masks.runs(it, "F"), h, w)
        rle = {"size": [int(v) for v in coded["size"]], "counts": coded["counts"].decode("ascii")}
        anns.append({"node": it["node"], "parent": it["parent"], "category": it["label"], "level": it["level"],
                     "score": it["score"], "segmentation": rle, "area": int(mask_utils.area(coded)),
                     "bbox": [int(v) for v in mask_utils.toBbox(coded)], "iscrowd": 0})
    return {"image": {"file_name": file_name, "width": w, "height": h}, "annotations": anns}


class _CocoIds:
    """Global ids for per-image records, in the order they come: images from 1, annotations from
    1, categories by first use."""

    def __init__(self) -> None:
        self.images = self.annotations = 0
        self.categories: dict[str, int] = {}

    def number(self, rec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.images += 1
        first = self.annotations + 1
        by_node = {a["node"]: first + i for i, a in enumerate(rec["annotations"])}
        out = []
        for i, a in enumerate(rec["annotations"]):
            cat = self.categories.setdefault(a["category"], len(self.categories) + 1)
            parent_id = by_node.get(a["parent"]) if a["parent"] is not None else None
            entry = {"id": first + i, "image_id": self.images, "category_id": cat, "segmentation": a["segmentation"],
                     "area": a["area"], "bbox": a["bbox"], "iscrowd": 0, "level": a["level"], "node": a["node"],
                     "parent_id": parent_id,
                     # the same links where CVAT / Datumaro look for per-annotation values (they drop other keys)
                     "attributes": {k: v for k, v in (("node", a["node"]), ("level", a["level"]), ("parent_id", parent_id))
                                    if v is not None}}
            if a["score"] is not None:
                entry["score"] = a["score"]
            out.append(entry)
        self.annotations += len(out)
        return {"id": self.images, **rec["image"]}, out

    def category_list(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n, "supercategory": ""} for n, i in self.categories.items()]


def _coco_info(description: str) -> dict[str, Any]:
    return {"description": description, "version": "1.0"}


def coco_dataset(records: Iterable[dict[str, Any]], description: str = "CAST Explorer part-whole annotations") -> dict[str, Any]:
    """A COCO instances file from per-image records (ids numbered in the given order)."""
    ids, images, annotations = _CocoIds(), [], []
    for rec in records:
        image, anns = ids.number(rec)
        images.append(image)
        annotations += anns
    return {"info": _coco_info(description), "licenses": [], "images": images, "annotations": annotations,
            "categories": ids.category_list()}


def write_coco_dataset(path: str | os.PathLike[str], records: Iterable[dict[str, Any]],
                       description: str = "CAST Explorer part-whole annotations") -> int:
    """:func:`coco_dataset` written as it is made: one record in memory at a time (the images'
    entries are kept, the annotations go to a side file). Atomic; returns the number of images."""
    ids, images = _CocoIds(), []
    side, tmp = f"{path}.annotations{os.getpid()}", f"{path}.tmp{os.getpid()}"
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    try:
        with open(side, "w") as f:
            for rec in records:
                image, anns = ids.number(rec)
                images.append(image)
                for a in anns:
                    f.write(("," if a["id"] > 1 else "") + dumps(a))
        with open(tmp, "w") as out, open(side) as f:
            out.write(f'{{"info":{dumps(_coco_info(description))},"licenses":[],"images":{dumps(images)},"annotations":[')
            while chunk := f.read(1 << 20):
                out.write(chunk)
            out.write(f'],"categories":{dumps(ids.category_list())}}}')
        os.replace(tmp, path)
    finally:
        for p in (side, tmp):
            if os.path.exists(p):
                os.remove(p)
    return len(images)


# ---------------------------------------------------------------------------------------------
# Label Studio
# ---------------------------------------------------------------------------------------------


def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits (most significant first)."""
    top = int(widths.max())
    word = 16 if top <= 16 else 32
    # every value as a big-endian word, unpacked to its bits (row i: values[i], most significant first)
    table = np.unpackbits(values.astype(f">u{word // 8}").view(np.uint8)).reshape(-1, word)
    keep = np.arange(word)[None] >= (word - widths)[:, None]  # the last widths[i] bits of row i
    return table[keep]


def ls_rle_encode(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a ``[H, W]`` bool mask (see the module docstring)."""
    flat = np.asarray(mask, bool).ravel()
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    return _ls_rle_of_runs(flat[starts], np.diff(np.append(starts, flat.size)))


def _ls_rle_of_runs(on: np.ndarray, lengths: np.ndarray) -> list[int]:
    """Label Studio's brush RLE from the row-major runs of a mask."""
    total = int(lengths.sum())
    lengths = lengths.astype(np.int64) * 4  # RGBA: each pixel four words
    values = np.where(on, 255, 0)
    # a run covers at most 2**16 words; longer ones continue in more records
    pieces = -(-lengths // 65536)
    values = np.repeat(values, pieces)
    counts = np.full(values.size, 65536, np.int64)
    last = np.cumsum(pieces) - 1
    counts[last] = lengths - (pieces - 1) * 65536
    m = counts - 1  # stored: count - 1
    cls = np.select([m < 8, m < 16, m < 256], [0, 1, 2], 3)
    width = np.asarray(_RLE_SIZES)[cls]
    header_v = np.array([total * 4, 8 - 1, *(s - 1 for s in _RLE_SIZES)])
    header_w = np.array([32, 5, 4, 4, 4, 4])
    fields_v = np.stack([np.ones_like(m), cls, m, values], 1).ravel()
    fields_w = np.stack([np.ones_like(m), np.full_like(m, 2), width, np.full_like(m, 8)], 1).ravel()
    bits = np.concatenate([_bits(header_v, header_w), _bits(fields_v, fields_w)])
    return np.packbits(bits).astype(int).tolist()


def ls_rle_decode(rle: Sequence[int], shape: tuple[int, int] | None = None) -> np.ndarray:
    """The words (or, with ``shape``, the ``[H, W]`` bool mask of the first channel) of a Label
    Studio brush RLE; the reading side of the format, for checking files."""
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        v = 0
        for b in bits[pos:pos + n]:
            v = (v << 1) | int(b)
        pos += n
        return v

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint32)
    i = 0
    while i < num:
        repeated = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeated:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    if shape is None:
        return out
    return out[::4].reshape(shape) > 0


@dataclass(frozen=True)
class LabelStudioTarget:
    """Where pre-annotations go in a Label Studio labeling config, and which label each region gets.

    The defaults are the config :func:`labelstudio_config` writes (any label: the config is made
    from the labels used). A project's own config (read by the Label Studio backend) names its
    controls and, in ``labels``, the ``BrushLabels`` values; a region then takes its predicted class
    when that is one of them (case-insensitive), else its level's granularity (:data:`GRANULARITY`)
    when that is, else the first label.
    """

    from_name: str = LS_FROM_NAME  # the BrushLabels control
    to_name: str = LS_TO_NAME  # the Image tag it labels
    data_key: str = LS_TO_NAME  # the task data field holding the image ($image)
    labels: tuple[str, ...] | None = None  # the BrushLabels' label values; None: any
    relation_labels: tuple[str, ...] = (PART_OF,)  # labels of the part-of relations; (): unlabelled
    levels: tuple[int, ...] = (1, 2, 3, 4)  # tree levels exported (annotated regions are always kept)

    def label(self, predicted: str, level: int | None) -> str:
        """The config's label for a region with this predicted class (or annotated label) and level."""
        if self.labels is None:
            return predicted
        by_key = {lbl.casefold(): lbl for lbl in self.labels}
        for wanted in (predicted, GRANULARITY.get(level or 0, "")):
            if wanted and wanted.casefold() in by_key:
                return by_key[wanted.casefold()]
        return self.labels[0]

    def brush_region(self, region_id: str, label: str, rle: list[int], size: tuple[int, int]) -> dict[str, Any]:
        """One brush region in Label Studio's result format (``size`` = (width, height))."""
        return {"id": region_id, "from_name": self.from_name, "to_name": self.to_name, "type": "brushlabels",
                "original_width": size[0], "original_height": size[1], "image_rotation": 0,
                "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}


DEFAULT_TARGET = LabelStudioTarget()


def _kept_items(items: list[dict[str, Any]], levels: Sequence[int]) -> list[dict[str, Any]]:
    """The items of the chosen levels, each linked to its nearest kept ancestor."""
    parent = {it["node"]: it["parent"] for it in items}
    kept = [it for it in items if it["level"] is None or it["level"] in levels]
    names = {it["node"] for it in kept}
    out = []
    for it in kept:
        up = it["parent"]
        while up is not None and up not in names:
            up = parent.get(up)
        out.append({**it, "parent": up})
    return out


def labelstudio_record(tree: Hierarchy, image_ref: str, annotations: Annotations | None = None,
                       model_version: str = "", target: LabelStudioTarget = DEFAULT_TARGET) -> dict[str, Any]:
    """One Label Studio task with the tree (or regions) as pre-annotations (``predictions``): a
    brush region per segment of ``target.levels`` (or per annotated region), each linked to the
    region it is part of by a ``part-of`` relation (child -> parent), and the prediction's score
    (the segments' mean top-class probability, for models with a classifier)."""
    result: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    scores: list[float] = []
    masks = _Masks(tree, annotations)
    for it in _kept_items(masks.items, target.levels):
        rle = _ls_rle_of_runs(*masks.runs(it, "C"))
        result.append(target.brush_region(it["node"], target.label(it["label"], it["level"]), rle, tree.size))
        if it["parent"] is not None:
            links.append({"type": "relation", "from_id": it["node"], "to_id": it["parent"], "direction": "right",
                          **({"labels": [target.relation_labels[0]]} if target.relation_labels else {})})
        if it["score"] is not None:
            scores.append(it["score"])
    result += links  # the relations after every region they join
    prediction: dict[str, Any] = {"model_version": model_version or str(tree.model.get("name", "cast")), "result": result}
    if scores:
        prediction["score"] = round(float(np.mean(scores)), 6)
    return {"data": {target.data_key: image_ref}, "predictions": [prediction]}


def labelstudio_tasks(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks file (one task per image, in the given order)."""
    return list(records)


def _labels_of(task: dict[str, Any]) -> list[str]:
    return [lbl for p in task.get("predictions", []) for r in p["result"] if r.get("type") == "brushlabels"
            for lbl in r["value"]["brushlabels"]]


def labelstudio_config(tasks: Iterable[dict[str, Any]] | None = None, labels: Iterable[str] = ()) -> str:
    """The labeling config XML that the tasks' pre-annotations fit: one ``BrushLabels`` with
    every label used (in ``tasks``, then ``labels``), and ``Relations`` with ``part-of``."""
    used = list(dict.fromkeys([*(lbl for t in tasks or () for lbl in _labels_of(t)), *labels]))
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=LS_TO_NAME, value=f"${LS_TO_NAME}", zoom="true")
    brush = ET.SubElement(view, "BrushLabels", name=LS_FROM_NAME, toName=LS_TO_NAME)
    palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
    for i, lbl in enumerate(used):
        ET.SubElement(brush, "Label", value=lbl, background=palette[i % len(palette)])
    relations = ET.SubElement(view, "Relations")
    ET.SubElement(relations, "Relation", value=PART_OF)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


@dataclass(frozen=True)
class EncodedTask:
    """A Label Studio task already written as JSON text, with the labels it uses (so a tasks
    file is assembled from stored tasks without decoding their long RLE lists)."""

    text: str
    labels: tuple[str, ...]

    @classmethod
    def of(cls, task: dict[str, Any]) -> EncodedTask:
        return cls(json.dumps(task, separators=(",", ":")), tuple(dict.fromkeys(_labels_of(task))))

    def dumps(self) -> str:
        """One file: the labels on the first line, the task on the second."""
        return json.dumps(self.labels) + "\n" + self.text

    @classmethod
    def loads(cls, text: str) -> EncodedTask:
        head, _, body = text.partition("\n")
        return cls(body, tuple(json.loads(head)))


def write_labelstudio(path: str | os.PathLike[str], config_path: str | os.PathLike[str],
                      tasks: Iterable[dict[str, Any] | EncodedTask]) -> int:
    """The tasks file and its labeling config, written as the tasks come (one in memory at a
    time). Atomic; returns the number of tasks."""
    tmp, labels, n = f"{path}.tmp{os.getpid()}", {}, 0
    try:
        with open(tmp, "w") as f:
            f.write("[")
            for task in tasks:
                enc = task if isinstance(task, EncodedTask) else EncodedTask.of(task)
                f.write(("," if n else "") + enc.text)
                labels.update(dict.fromkeys(enc.labels))
                n += 1
            f.write("]")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    write_text(config_path, labelstudio_config(labels=labels))
    return n


def validate_labelstudio(tasks: Sequence[dict[str, Any]], config: str) -> list[str]:
    """Problems that would keep Label Studio from importing these pre-annotations with this
    labeling config (empty when none): every region's ``from_name`` / ``to_name`` must name tags
    of the config, its labels must be declared, relations must join existing regions with a
    declared relation label, region ids must be unique within a task."""
    root = ET.fromstring(config)
    tags = {el.get("name"): el for el in root.iter() if el.get("name")}
    relation_labels = {el.get("value") for el in root.iter("Relation")}
    problems = []
    for t, task in enumerate(tasks):
        if LS_TO_NAME not in task.get("data", {}):
            problems.append(f"task {t}: no data.{LS_TO_NAME}")
        for p in task.get("predictions", []):
            ids = [r["id"] for r in p["result"] if r.get("type") != "relation"]
            if len(ids) != len(set(ids)):
                problems.append(f"task {t}: region ids are not unique")
            for r in p["result"]:
                if r.get("type") == "relation":
                    if r.get("from_id") not in ids or r.get("to_id") not in ids:
                        problems.append(f"task {t}: relation {r.get('from_id')} -> {r.get('to_id')} joins missing regions")
                    if not set(r.get("labels", [])) <= relation_labels:
                        problems.append(f"task {t}: relation label {r.get('labels')} not in the config")
                    continue
                control = tags.get(r.get("from_name"))
                if control is None or control.tag.lower() != r.get("type", "").lower() or control.get("toName") != r.get("to_name"):
                    problems.append(f"task {t}: region {r.get('id')}: from_name/to_name/type do not match the config")
                    continue
                declared = {el.get("value") for el in control.iter("Label")}
                missing = set(r["value"].get(r["type"], [])) - declared
                if missing:
                    problems.append(f"task {t}: region {r.get('id')}: labels {sorted(missing)} not declared")
                if r.get("to_name") not in tags:
                    problems.append(f"task {t}: region {r.get('id')}: no tag named {r.get('to_name')!r}")
    return problems


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write compact JSON atomically (a temporary file, then a rename)."""
    write_text(path, json.dumps(obj, separators=(",", ":")))  # dumps, not dump: the C encoder (dump is pure Python)
