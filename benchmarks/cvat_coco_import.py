"""Does CVAT's "Upload annotations -> COCO 1.0" read our COCO export? Checked with Datumaro,
the library CVAT imports COCO with (``Dataset.import_from(path, "coco_instances")``, then
``import_dm_annotations`` turns the items into CVAT shapes).

What it checks (Datumaro runs in its own virtualenv, never the project's Python: it pins its own
opencv, which would replace the project's opencv-contrib-python-headless):

1. Our files: ``python -m cast segment IMAGES --model bundled_flat --format coco`` writes ``coco.json``
   for :data:`CLI_IMAGES` (the raw tree: every segment of the four levels, with ``level``,
   ``node``, ``parent_id`` and ``score``); the library writes a second file,
   :func:`cast.exports.write_coco_dataset` of :func:`cast.exports.coco_record` for
   :data:`ANNOTATED_IMAGE` with annotated regions (a whole and two of its parts).
2. Each is laid out as CVAT's COCO zip / Datumaro's ``coco_instances`` wants it:
   ``annotations/instances_default.json`` and the images in ``images/default/`` (Datumaro finds
   an image at ``images/<subset>/<file_name>``; the item id, which CVAT matches against the
   task's frame names, is ``file_name`` without its extension).
3. In the Datumaro venv (a helper script in a subprocess): detection as CVAT's zip import runs
   it, ``Dataset.import_from(dir, "coco_instances")``, every item, annotation, label and decoded
   mask (as hashes), an export back to COCO (``segmentation_mode="mask"``, and the default
   ``"guess"`` that CVAT's own COCO export uses), and, for information, the import of a bare
   ``coco.json`` (CVAT's JSON upload).
4. Checks: every image became an item with the id, file, size and image id we wrote; as many
   masks per item as our annotations, with our annotation ids; the labels (categories, in id
   order, and each annotation's) equal ours; every annotation became an ``RleMask`` whose
   decoded mask equals pycocotools' decode of our ``segmentation``; no mask is empty (CVAT's
   ``import_dm_annotations`` fails on one); the round trip keeps every mask and area; ``node``,
   ``level``, ``parent_id`` and ``score`` survive as the mask's attributes wherever we wrote them
   (Datumaro keeps only ``score`` and the keys inside an annotation's ``"attributes"``, which is
   why our export repeats the links there).

``--extra-dm-python`` runs the same checks with more Datumaro installs, e.g. CVAT's fork
(``cvat-ai/datumaro``, which CVAT's server installs from git; it is not on PyPI).

The result goes to ``benchmarks/results/cvat_coco_import.json``; the exit status is non-zero
when a check failed.

Setup (once, outside the repository) and run::

    python -m venv /work/dm-venv && /work/dm-venv/bin/pip install datumaro==1.13.12
    python benchmarks/cvat_coco_import.py [--dm-python /work/dm-venv/bin/python] \\
        [--extra-dm-python /work/dm-cvat-venv/bin/python] [--timeout 900]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from cast.exports import coco_record, write_coco_dataset  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples"
CLI_IMAGES = ("chelsea.jpg", "coffee.jpg", "partshapes_car_0001.png")  # raw tree segments, as the CLI writes them
ANNOTATED_IMAGE = "rocket.jpg"  # annotated regions, made with the library
SUBSET = "default"  # CVAT's subset name: annotations/instances_default.json, images/default/
EXTRA_KEYS = ("node", "level", "parent_id", "score")  # our keys beyond COCO's
DEFAULT_DM_PYTHON = "/work/dm-venv/bin/python"
SETUP = "python -m venv /work/dm-venv && /work/dm-venv/bin/pip install datumaro==1.13.12"
OUT = ROOT / "benchmarks" / "results" / "cvat_coco_import.json"

# Run by the venv's Python: what Datumaro makes of each dataset folder.
DM_HELPER = r'''
import hashlib, importlib.metadata as md, json, os, shutil, sys, tempfile, traceback
import numpy as np
import datumaro
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset
from datumaro.components.format_detection import detect_dataset_format
try:  # Datumaro >= 1.0
    from datumaro.plugins.data_formats.coco.importer import CocoImporter
except ImportError:  # 0.x, CVAT's fork
    from datumaro.plugins.coco_format.importer import CocoImporter


def mask_hash(m):
    m = np.ascontiguousarray(np.asarray(m).astype(bool))
    return hashlib.sha1(np.packbits(m.ravel()).tobytes() + repr(m.shape).encode()).hexdigest()


def jsonable(v):
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def detect(path):
    """What CVAT's zip import runs first (bindings.detect_dataset, with only the COCO importer):
    it refuses the upload when COCO is not detected, unless detection is unsupported."""
    rejections = []
    found = detect_dataset_format([("coco", CocoImporter.detect)], path,
                                  rejection_callback=lambda f, r, m: rejections.append((f, r.name, m)))
    found = [getattr(f, "name", f) for f in found]
    return {"detected": found, "rejections": [f"{f}: {r}: {m}" for f, r, m in rejections],
            "cvat_accepts": bool(found) or all(r == "detection_unsupported" for _, r, _ in rejections)}


def message(e):
    """The exception and its causes, one line."""
    parts = []
    while e is not None and len(parts) < 5:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def describe(ds):
    labels = [c.name for c in ds.categories()[AnnotationType.label].items]
    items = []
    for item in ds:
        media = item.media
        path = getattr(media, "path", None)
        info = {"id": item.id, "subset": item.subset, "attributes": {k: jsonable(v) for k, v in item.attributes.items()},
                "media_path": path, "media_exists": bool(path and os.path.isfile(path)),
                "size": list(media.size) if media is not None and media.size else None, "loaded_shape": None,
                "annotations": []}
        if info["media_exists"]:
            info["loaded_shape"] = list(media.data.shape[:2])
        for ann in item.annotations:
            a = {"type": ann.type.name, "class": type(ann).__name__, "id": ann.id, "group": ann.group,
                 "label": labels[ann.label] if ann.label is not None else None,
                 "attributes": {k: jsonable(v) for k, v in ann.attributes.items()}}
            if ann.type == AnnotationType.mask:
                img = ann.image
                a.update(hash=mask_hash(img), area=int(np.asarray(img).astype(bool).sum()), shape=list(img.shape))
            elif ann.type == AnnotationType.bbox:
                a["bbox"] = [float(v) for v in ann.get_bbox()]
            info["annotations"].append(a)
        items.append(info)
    return {"labels": labels, "items": items}


def export(ds, out, mode):
    ds.export(out, "coco_instances", save_media=False, segmentation_mode=mode)
    (path,) = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f.endswith(".json")]
    return path


def run(name, path, work):
    res = {"errors": []}
    try:
        res["detect"] = detect(path)
    except Exception as e:
        res["detect"] = {"error": message(e)}
    try:
        ds = Dataset.import_from(path, "coco_instances")
        res.update(describe(ds))
    except Exception as e:
        res["errors"].append(f"import_from({path!r}, 'coco_instances'): {message(e)}")
        res["traceback"] = traceback.format_exc()[-3000:]
        return res
    for mode in ("mask", "guess"):
        try:
            res[f"export_{mode}"] = export(ds, os.path.join(work, f"{name}-export-{mode}"), mode)
        except Exception as e:
            res["errors"].append(f"export (segmentation_mode={mode}): {message(e)}")
    return res


def bare_json(ann_file, work):
    """CVAT's upload of a .json (not a zip): import_from(<the file>, 'coco_instances')."""
    folder = os.path.join(work, "bare-upload")
    os.makedirs(folder, exist_ok=True)
    path = shutil.copy(ann_file, os.path.join(folder, "coco.json"))
    try:
        ds = Dataset.import_from(path, "coco_instances")
        d = describe(ds)
        return {"ok": True, "items": len(d["items"]), "masks": sum(a["type"] == "mask" for i in d["items"] for a in i["annotations"])}
    except Exception as e:
        return {"ok": False, "error": message(e)}


req = json.load(open(sys.argv[1]))
try:
    dist = md.distribution("datumaro")
    version, origin = dist.version, json.loads(dist.read_text("direct_url.json") or "{}").get("url", "PyPI")
except Exception:
    version, origin = getattr(datumaro, "__version__", getattr(datumaro, "VERSION", "?")), "?"
out = {"version": version, "origin": origin, "python": sys.version.split()[0], "datasets": {}}
for name, path in req["datasets"].items():
    out["datasets"][name] = run(name, path, req["work"])
out["bare_json"] = bare_json(req["bare_json"], req["work"])
json.dump(out, open(sys.argv[2], "w"), indent=1)
'''


# ---------------------------------------------------------------------------------------------
# Our exports
# ---------------------------------------------------------------------------------------------


def export_cli(folder: Path, timeout: float) -> Path:
    """``coco.json`` of :data:`CLI_IMAGES` as the CLI writes it (the flat bundled model, raw tree)."""
    cmd = [sys.executable, "-m", "cast", "segment", *(str(EXAMPLES / n) for n in CLI_IMAGES), "--model", "bundled_flat",
           "--out", str(folder), "--format", "coco", "--quiet", "--workers", "0", "--writers", "0"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=timeout)
    return folder / "coco.json"


def export_annotated(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A COCO file of one image's annotated regions (a whole and two of its parts), written by the
    library, and each region's true mask (:meth:`Annotations.mask`), by ``node``."""
    from cast import load_segmenter
    from cast.annotations import Annotations

    tree = load_segmenter("bundled_flat")(str(EXAMPLES / ANNOTATED_IMAGE))
    whole = next(n for n in tree.nodes_at(4) if len(n.children) >= 2)  # a top segment with two parts
    ann = Annotations(tree)
    ann.create([str(whole.key)], "object")
    for i, child in enumerate(whole.children[:2]):
        ann.create([f"L3-{child}"], f"part {i + 1}")
    path = folder / "coco.json"
    write_coco_dataset(path, [coco_record(tree, ANNOTATED_IMAGE, ann)])
    return path, {rid: ann.mask(rid) for rid in ann.regions}


def layout(coco_file: Path, images: list[Path], dest: Path) -> Path:
    """``dest/annotations/instances_default.json`` + ``dest/images/default/<file_name>``: CVAT's
    COCO 1.0 zip, unzipped."""
    (dest / "annotations").mkdir(parents=True)
    (dest / "images" / SUBSET).mkdir(parents=True)
    shutil.copy(coco_file, dest / "annotations" / f"instances_{SUBSET}.json")
    for img in images:
        shutil.copy(img, dest / "images" / SUBSET / img.name)
    return dest


# ---------------------------------------------------------------------------------------------
# Datumaro, in its venv
# ---------------------------------------------------------------------------------------------


def run_datumaro(dm_python: Path, datasets: dict[str, Path], bare_json: Path, work: Path, timeout: float) -> dict[str, Any]:
    """The helper's report for each dataset folder."""
    helper, req, out = work / "dm_helper.py", work / "dm_request.json", work / "dm_result.json"
    helper.write_text(DM_HELPER)
    req.write_text(json.dumps({"datasets": {k: str(v) for k, v in datasets.items()}, "bare_json": str(bare_json),
                               "work": str(work)}))
    out.unlink(missing_ok=True)
    proc = subprocess.run([str(dm_python), str(helper), str(req), str(out)], capture_output=True, text=True,
                          timeout=timeout, cwd=work)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"Datumaro helper failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def mask_hash(m: np.ndarray) -> str:
    """The same hash as the helper's: bits of the C-order ``[H, W]`` bool mask, and the shape."""
    m = np.ascontiguousarray(np.asarray(m).astype(bool))
    return hashlib.sha1(np.packbits(m.ravel()).tobytes() + repr(m.shape).encode()).hexdigest()


def decode(segmentation: dict[str, Any], h: int, w: int) -> np.ndarray:
    """pycocotools' decode of a compressed (``counts`` text) or uncompressed (list) RLE."""
    rle = segmentation
    if isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    return mask_utils.decode(rle)


def check_items(coco: dict[str, Any], got: dict[str, Any], errors: list[str], name: str) -> dict[str, Any]:
    """Items: one per image, id = file stem, our image id, size, and the image file found."""
    items = {i["id"]: i for i in got["items"]}
    ok = len(items) == len(coco["images"])
    if not ok:
        errors.append(f"{name}: {len(items)} items for {len(coco['images'])} images")
    for img in coco["images"]:
        stem = Path(img["file_name"]).stem
        it = items.get(stem)
        problems = []
        if it is None:
            problems.append("no item")
        else:
            if it["attributes"].get("id") != img["id"]:
                problems.append(f"image id {it['attributes'].get('id')} != {img['id']}")
            if it["size"] != [img["height"], img["width"]]:
                problems.append(f"size {it['size']} != {[img['height'], img['width']]}")
            if not it["media_exists"] or Path(it["media_path"]).name != img["file_name"]:
                problems.append(f"image file not found (media path {it['media_path']})")
            elif it["loaded_shape"] != [img["height"], img["width"]]:
                problems.append(f"loaded image is {it['loaded_shape']}")
        if problems:
            ok = False
            errors.append(f"{name}: {img['file_name']}: " + "; ".join(problems))
    return {"items_found": len(items), "items_match": ok}


def check_annotations(coco: dict[str, Any], got: dict[str, Any], errors: list[str], name: str,
                      truth: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Masks: as many as ours per item, our ids and labels, decoded masks equal to ours."""
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    ours_labels = [cats[i] for i in sorted(cats)]
    labels_equal = got["labels"] == ours_labels
    if not labels_equal:
        errors.append(f"{name}: Datumaro labels {got['labels']} != ours {ours_labels}")
    images = {i["id"]: i for i in coco["images"]}
    items = {i["id"]: i for i in got["items"]}
    per_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    counts_equal, masks_equal, ann_labels_equal, empty, truth_equal = True, 0, True, 0, 0
    types: dict[str, int] = {}
    for image_id, anns in per_image.items():
        img = images[image_id]
        item = items.get(Path(img["file_name"]).stem, {"annotations": []})
        for a in item["annotations"]:
            types[a["class"]] = types.get(a["class"], 0) + 1
        masks = {a["id"]: a for a in item["annotations"] if a["type"] == "mask"}
        if len(masks) != len(anns) or set(masks) != {a["id"] for a in anns}:
            counts_equal = False
            errors.append(f"{name}: {img['file_name']}: {len(masks)} masks (ids {sorted(masks)[:5]}...) "
                          f"for our {len(anns)} annotations")
        for a in anns:
            ours = decode(a["segmentation"], img["height"], img["width"])
            empty += int(ours.sum() == 0)
            if truth is not None and np.array_equal(ours.astype(bool), truth[a["node"]]):
                truth_equal += 1
            m = masks.get(a["id"])
            if m is None:
                continue
            if m["class"] != "RleMask":
                errors.append(f"{name}: annotation {a['id']} became a {m['class']}, not an RleMask")
            elif m["hash"] == mask_hash(ours) and m["area"] == a["area"]:
                masks_equal += 1
            else:
                errors.append(f"{name}: annotation {a['id']}: Datumaro's mask differs from ours "
                              f"(area {m['area']} vs {a['area']}, shape {m['shape']})")
            if m["label"] != cats[a["category_id"]]:
                ann_labels_equal = False
                errors.append(f"{name}: annotation {a['id']}: label {m['label']!r} != {cats[a['category_id']]!r}")
    n = len(coco["annotations"])
    if empty:
        errors.append(f"{name}: {empty} empty masks (CVAT's import_dm_annotations cannot crop an empty mask)")
    out = {"annotations": n, "annotations_per_item_equal": counts_equal, "labels": ours_labels,
           "labels_equal": labels_equal and ann_labels_equal, "masks_equal": f"{masks_equal}/{n}",
           "empty_masks": empty, "datumaro_annotation_types": types}
    if truth is not None:
        out["masks_equal_to_regions"] = f"{truth_equal}/{n}"
        if truth_equal != n:
            errors.append(f"{name}: only {truth_equal}/{n} of our masks equal Annotations.mask")
    return out


def extra_attributes(coco: dict[str, Any], got: dict[str, Any], errors: list[str], name: str) -> dict[str, str]:
    """For each of our extra keys: on how many annotations Datumaro kept it (same value). The
    part-whole links (and the score) must survive on every annotation that has them."""
    ours = {a["id"]: a for a in coco["annotations"]}
    out = {}
    for key in EXTRA_KEYS:
        have = [a for a in ours.values() if a.get(key) is not None]
        kept = sum(1 for it in got["items"] for m in it["annotations"] if m["type"] == "mask" and m["id"] in ours
                   and ours[m["id"]].get(key) is not None and m["attributes"].get(key) == ours[m["id"]][key])
        out[key] = ("not in our file" if not have else f"kept {kept}/{len(have)}" if kept else f"dropped (0/{len(have)})")
        if kept != len(have):
            errors.append(f"{name}: {key} kept on {kept}/{len(have)} annotations")
    return out


def check_round_trip(coco: dict[str, Any], got: dict[str, Any], errors: list[str], name: str) -> dict[str, Any]:
    """Datumaro's re-export: with ``segmentation_mode="mask"`` every mask and area as ours; with
    the default ``"guess"`` (CVAT's COCO export) our ``iscrowd: 0`` masks become polygons."""
    ours = {a["id"]: a for a in coco["annotations"]}
    images = {i["id"]: i for i in coco["images"]}
    out: dict[str, Any] = {}
    for mode in ("mask", "guess"):
        path = got.get(f"export_{mode}")
        if not path:
            out[mode] = "not exported"
            if mode == "mask":
                errors.append(f"{name}: no round-trip export")
            continue
        data = json.loads(Path(path).read_text())
        areas_equal = masks_equal = polygons = 0
        rel: list[float] = []
        for a in data["annotations"]:
            mine = ours.get(a["id"])
            if mine is None:
                continue
            img = images[mine["image_id"]]
            seg = a["segmentation"]
            if isinstance(seg, list):
                polygons += 1
                rel.append(abs(a["area"] - mine["area"]) / max(mine["area"], 1))
            elif mask_hash(decode(seg, img["height"], img["width"])) == mask_hash(
                    decode(mine["segmentation"], img["height"], img["width"])):
                masks_equal += 1
            areas_equal += int(round(a["area"]) == mine["area"])
        n = len(ours)
        out[mode] = {"annotations": len(data["annotations"]), "areas_equal": f"{areas_equal}/{n}",
                     "masks_equal": f"{masks_equal}/{n}", "as_polygons": polygons,
                     "categories_equal": [c["name"] for c in data["categories"]] == [c["name"] for c in coco["categories"]]}
        if rel:
            out[mode]["polygon_area_rel_diff_mean"] = round(float(np.mean(rel)), 4)
        if mode == "mask" and (areas_equal != n or masks_equal != n or len(data["annotations"]) != n):
            errors.append(f"{name}: round trip (mask mode) kept {masks_equal}/{n} masks, {areas_equal}/{n} areas, "
                          f"{len(data['annotations'])} annotations")
    return out


def check_dataset(coco: dict[str, Any], got: dict[str, Any], name: str,
                  truth: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every check of one dataset folder as one Datumaro read it."""
    errors = list(f"{name}: {e}" for e in got.get("errors", []))
    out: dict[str, Any] = {"images": len(coco["images"]), "detect": got.get("detect")}
    if not (got.get("detect") or {}).get("cvat_accepts"):
        errors.append(f"{name}: CVAT's COCO detection would refuse the folder: {got.get('detect')}")
    if "items" in got:
        out.update(check_items(coco, got, errors, name))
        out.update(check_annotations(coco, got, errors, name, truth))
        out["extra_attributes"] = extra_attributes(coco, got, errors, name)
        out["round_trip"] = check_round_trip(coco, got, errors, name)
    out["errors"] = errors
    out["passed"] = not errors
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def check_python(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: no Python at {p}; set up Datumaro once with:\n    {SETUP}")
    return p


def run(dm_pythons: list[Path], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "cvat_coco_import", "cli_images": list(CLI_IMAGES),
                              "annotated_image": ANNOTATED_IMAGE, "layout": f"annotations/instances_{SUBSET}.json + images/{SUBSET}/"}
    with tempfile.TemporaryDirectory(prefix="cvat-coco-") as tmp:
        work = Path(tmp)
        cli_file = export_cli(work / "cli", timeout)
        (work / "annotated").mkdir()
        ann_file, truth = export_annotated(work / "annotated")
        cocos = {"cli_raw_tree": json.loads(cli_file.read_text()), "annotated_regions": json.loads(ann_file.read_text())}
        folders = {"cli_raw_tree": layout(cli_file, [EXAMPLES / n for n in CLI_IMAGES], work / "ds-cli"),
                   "annotated_regions": layout(ann_file, [EXAMPLES / ANNOTATED_IMAGE], work / "ds-annotated")}
        result["exported"] = {k: {"images": len(c["images"]), "annotations": len(c["annotations"]),
                                  "categories": [x["name"] for x in c["categories"]],
                                  "annotation_keys": sorted(c["annotations"][0]) if c["annotations"] else []}
                              for k, c in cocos.items()}
        runs = []
        for i, py in enumerate(dm_pythons):
            dm_work = work / f"dm{i}"
            dm_work.mkdir()
            got = run_datumaro(py, folders, cli_file, dm_work, timeout)
            one: dict[str, Any] = {"python": str(py), "datumaro_version": got["version"], "origin": got["origin"],
                                   "datasets": {}}
            for name in ("cli_raw_tree", "annotated_regions"):
                one["datasets"][name] = check_dataset(cocos[name], got["datasets"][name], name,
                                                      truth if name == "annotated_regions" else None)
            one["bare_json_upload"] = got["bare_json"]
            one["errors"] = [e for d in one["datasets"].values() for e in d["errors"]]
            one["passed"] = not one["errors"]
            runs.append(one)
    main_run = runs[0]
    result.update({
        "datumaro_version": main_run["datumaro_version"],
        "images": sum(d["images"] for d in main_run["datasets"].values()),
        "annotations": sum(d.get("annotations", 0) for d in main_run["datasets"].values()),
        "masks_equal": {k: d.get("masks_equal") for k, d in main_run["datasets"].items()},
        "labels_equal": all(d.get("labels_equal") for d in main_run["datasets"].values()),
        "extra_attributes": main_run["datasets"]["cli_raw_tree"].get("extra_attributes"),
        "runs": runs,
        "errors": [f"datumaro {r['datumaro_version']}: {e}" for r in runs for e in r["errors"]],
        "seconds": round(time.perf_counter() - t0, 1),
    })
    result["passed"] = all(r["passed"] for r in runs)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dm-python", default=DEFAULT_DM_PYTHON, help="Python of the venv with datumaro")
    parser.add_argument("--extra-dm-python", action="append", default=[],
                        help="more Datumaro installs to check with (e.g. CVAT's fork); repeatable")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each subprocess")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    pythons = [check_python(p) for p in [args.dm_python, *args.extra_dm_python]]
    try:
        result = run(pythons, args.timeout)
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        result = {"benchmark": "cvat_coco_import", "errors": [f"{type(e).__name__}: {e}"], "passed": False}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in result.get("runs", []):
        print(f"datumaro {r['datumaro_version']} ({r['origin']}): " + ", ".join(
            f"{k}: {d.get('items_found')} items, masks {d.get('masks_equal')}, labels equal {d.get('labels_equal')}"
            for k, d in r["datasets"].items()) + f" -> {'passed' if r['passed'] else 'FAILED'}")
    for e in result["errors"]:
        print("error:", e, file=sys.stderr)
    print(f"{'passed' if result['passed'] else 'FAILED'}; results in {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
