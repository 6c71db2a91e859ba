"""Does our Label Studio pre-annotation export import into a real Label Studio, and does Label
Studio's own brush-RLE decoder read our RLE exactly?

What it checks, against a live Label Studio server started here (from its own virtualenv, never
the project's Python: label-studio pins its own opencv and numpy):

1. ``python -m cast segment EXAMPLES --format labelstudio --model bundled_flat`` writes
   ``labelstudio.json`` + ``labelstudio.xml`` (raw tree segments: every segment of the four
   levels, with ``part-of`` relations to the enclosing segment); a second, library-made task holds
   *annotated regions* (``R1`` ...) of one more image, with its own config
   (:func:`cast.exports.labelstudio_config`).
2. Label Studio is started on 127.0.0.1 (a free port, a temporary data folder, analytics, Sentry
   and the version check off) with a user whose API token is known; only 127.0.0.1 is ever
   contacted.
3. Through its REST API (``Authorization: Token ...``): a project per config, the tasks file
   imported as it is, the tasks and predictions read back.
4. Checks: every task imported; one prediction per task with as many results as exported; region
   ids, labels, RLEs and relations (``from_id`` / ``to_id`` / ``part-of``) unchanged; the
   predictions pass the SDK's ``LabelInterface.validate_prediction`` (what the import runs; it
   only logs failures unless a feature flag is on) and the server logged no validation failure;
   every stored RLE decodes with label-studio-sdk's ``converter.brush`` (``decode_rle`` words and
   ``decode_from_annotation``'s mask) to exactly what :func:`cast.exports.ls_rle_decode` gives,
   and the masks are right (each level of raw segments partitions the image; annotated regions
   equal :meth:`cast.annotations.Annotations.mask`); the prediction is accepted back as an
   annotation, after which a config lacking one of its labels is refused.

The result goes to ``benchmarks/results/labelstudio_import.json``; the exit status is non-zero
when a check failed.

Setup (once, outside the repository) and run::

    python -m venv /work/ls-venv && /work/ls-venv/bin/pip install label-studio==1.23.2
    python benchmarks/labelstudio_import.py [--ls-python /work/ls-venv/bin/python] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.app_latency import free_port  # noqa: E402
from cast.exports import labelstudio_config, labelstudio_record, ls_rle_decode  # noqa: E402
from tests.labelstudio_server import HOST, Api, start_server, stop_server, wait_ready  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples"
CLI_IMAGES = ("chelsea.jpg", "partshapes_car_0001.png")  # raw tree segments, as the CLI writes them
ANNOTATED_IMAGE = "rocket.jpg"  # annotated regions, made with the library
IMAGE_ROOT = "/data/local-files/?d=examples"  # a URL Label Studio accepts (the image need not load)
DEFAULT_LS_PYTHON = "/work/ls-venv/bin/python"
OUT = ROOT / "benchmarks" / "results" / "labelstudio_import.json"

# Run by the venv's Python: Label Studio's SDK validates and decodes what the server stored.
LS_HELPER = r'''
import json, sys
import numpy as np
import label_studio_sdk
from label_studio_sdk.converter.brush import decode_from_annotation, decode_rle
from label_studio_sdk.label_interface import LabelInterface

req = json.load(open(sys.argv[1]))
problems = []
for p in req["predictions"]:
    li = LabelInterface(p["config"])
    for e in li.validate_prediction({"result": p["result"]}, return_errors=True) or []:
        problems.append(f"{p['key']}: {e}")
words, masks = {}, {}
for r in req["regions"]:
    flat = {"type": "brushlabels", "rle": r["rle"], "original_width": r["width"],
            "original_height": r["height"], "brushlabels": r["labels"]}
    (mask,) = decode_from_annotation("label", [flat]).values()  # [H, W] alpha channel, as LS converts it
    words[r["key"]] = decode_rle(r["rle"]).tolist()
    masks[r["key"]] = np.packbits(mask.ravel() > 0)
np.savez_compressed(sys.argv[2], **{f"m{i}": masks[r["key"]] for i, r in enumerate(req["regions"])})
json.dump({"sdk_version": getattr(label_studio_sdk, "__version__", "?"), "validation": problems,
           "words": words}, open(sys.argv[3], "w"))
'''


# ---------------------------------------------------------------------------------------------
# Our exports
# ---------------------------------------------------------------------------------------------


def export_cli(folder: Path) -> tuple[list[dict[str, Any]], str]:
    """The CLI's tasks and labeling config for :data:`CLI_IMAGES` (the flat bundled model)."""
    cmd = [sys.executable, "-m", "cast", "segment", *(str(EXAMPLES / name) for name in CLI_IMAGES),
           "--model", "bundled_flat", "--out", str(folder), "--format", "labelstudio", "--image-root", IMAGE_ROOT, "--quiet"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900)
    return json.loads((folder / "labelstudio.json").read_text()), (folder / "labelstudio.xml").read_text()


def export_annotated() -> tuple[dict[str, Any], str, dict[str, np.ndarray]]:
    """One task of annotated regions (a whole, two parts, a part of each part), its config, and
    each region's true mask."""
    import cast
    from cast.annotations import Annotations

    tree = cast.Predictor("bundled_flat")(str(EXAMPLES / ANNOTATED_IMAGE))
    ann = Annotations(tree)
    ann.create(["L4-0"], "object")
    for i, child in enumerate(list(tree.node("L4-0").children)[:2]):
        ann.create([f"L3-{child}"], f"part {i + 1}")
        grandchild = tree.node(f"L3-{child}").children[0]
        ann.create([f"L2-{grandchild}"], "detail")
    task = labelstudio_record(tree, f"{IMAGE_ROOT}/{ANNOTATED_IMAGE}", ann)
    return task, labelstudio_config([task]), {rid: ann.mask(rid) for rid in ann.regions}


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


def import_project(api: Api, title: str, config: str, tasks: list[dict[str, Any]]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Create a project, import ``tasks``; ``(project id, import response, tasks read back with
    their predictions, in import order)``."""
    project = api.ok("POST", "/api/projects/", {"title": title, "label_config": config})
    response = api.ok("POST", f"/api/projects/{project['id']}/import?return_task_ids=true", tasks)
    stored = api.ok("GET", f"/api/projects/{project['id']}/tasks/?page=1&page_size=1000")
    stored = sorted(stored, key=lambda t: t["id"])
    for t in stored:
        t["predictions"] = api.ok("GET", f"/api/predictions/?task={t['id']}")
    return project["id"], response, stored


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def regions_of(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in result if r.get("type") == "brushlabels"]


def relations_of(result: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r["from_id"], r["to_id"], tuple(r.get("labels", []))) for r in result if r.get("type") == "relation"]


def compare_tasks(name: str, sent: list[dict[str, Any]], stored: list[dict[str, Any]], errors: list[str]) -> None:
    """Tasks, predictions, results, ids, labels, RLEs and relations unchanged by the import."""
    if len(stored) != len(sent):
        errors.append(f"{name}: {len(stored)} tasks stored, {len(sent)} sent")
    for i, (a, b) in enumerate(zip(sent, stored)):
        if b["data"] != a["data"]:
            errors.append(f"{name} task {i}: data {b['data']} != {a['data']}")
        if len(b["predictions"]) != 1:
            errors.append(f"{name} task {i}: {len(b['predictions'])} predictions stored, 1 sent")
            continue
        want, got = a["predictions"][0], b["predictions"][0]
        if len(got["result"]) != len(want["result"]):
            errors.append(f"{name} task {i}: {len(got['result'])} results stored, {len(want['result'])} sent")
        if got.get("model_version") != want["model_version"]:
            errors.append(f"{name} task {i}: model_version {got.get('model_version')!r} != {want['model_version']!r}")
        if "score" in want and (got.get("score") is None or abs(got["score"] - want["score"]) > 1e-6):
            errors.append(f"{name} task {i}: score {got.get('score')} != {want['score']}")
        sent_regions = {r["id"]: r for r in regions_of(want["result"])}
        got_regions = {r.get("id"): r for r in regions_of(got["result"])}
        if set(got_regions) != set(sent_regions):
            errors.append(f"{name} task {i}: region ids differ ({len(set(got_regions) ^ set(sent_regions))} not in both)")
        for rid, r in sent_regions.items():
            g = got_regions.get(rid)
            if g is None:
                continue
            for key in ("from_name", "to_name", "original_width", "original_height"):
                if g.get(key) != r[key]:
                    errors.append(f"{name} task {i} region {rid}: {key} {g.get(key)!r} != {r[key]!r}")
            if g["value"].get("brushlabels") != r["value"]["brushlabels"]:
                errors.append(f"{name} task {i} region {rid}: labels {g['value'].get('brushlabels')} != {r['value']['brushlabels']}")
            if g["value"].get("rle") != r["value"]["rle"]:
                errors.append(f"{name} task {i} region {rid}: stored RLE differs from the exported one")
        if sorted(relations_of(got["result"])) != sorted(relations_of(want["result"])):
            errors.append(f"{name} task {i}: relations differ")


def ls_decode(ls_python: Path, items: list[dict[str, Any]], predictions: list[dict[str, Any]],
              work: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Label Studio's SDK on the stored predictions: validation problems, ``decode_rle`` words
    and ``decode_from_annotation`` masks (packed bits), in the order of ``items``."""
    helper, req, npz, out = work / "ls_helper.py", work / "ls_request.json", work / "ls_masks.npz", work / "ls_out.json"
    helper.write_text(LS_HELPER)
    req.write_text(json.dumps({"regions": items, "predictions": predictions}))
    subprocess.run([str(ls_python), str(helper), str(req), str(npz), str(out)], check=True, timeout=900)
    with np.load(npz) as z:
        masks = [z[f"m{i}"] for i in range(len(items))]
    return json.loads(out.read_text()), masks


def check_masks(items: list[dict[str, Any]], words: dict[str, list[int]], masks: list[np.ndarray],
                truth: dict[str, np.ndarray], errors: list[str]) -> tuple[int, int]:
    """Label Studio's decoding vs ours (words and mask) and vs the true masks; ``(equal, total)``.
    Raw segments (``L<level>-<id>``) of one task and level must partition the image."""
    equal, cover = 0, {}
    for item, packed in zip(items, masks):
        key, h, w = item["key"], item["height"], item["width"]
        theirs = np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)
        ours = ls_rle_decode(item["rle"], (h, w))
        same_words = np.array_equal(np.asarray(words[key], np.int64), ls_rle_decode(item["rle"]).astype(np.int64))
        true = truth.get(key)
        if same_words and np.array_equal(theirs, ours) and (true is None or np.array_equal(theirs, true)):
            equal += 1
        else:
            errors.append(f"mask {key}: Label Studio's decoding differs (words equal: {same_words}, "
                          f"pixels differing from ours: {int((theirs != ours).sum())}"
                          + ("" if true is None else f", from the true mask: {int((theirs != true).sum())}") + ")")
        task, rid = key.split("/", 1)
        if rid.startswith("L"):
            level_key = (task, rid.split("-")[0])
            cover[level_key] = cover.get(level_key, np.zeros((h, w), np.int32)) + theirs
    for (task, level), count in cover.items():
        if not (count == 1).all():
            errors.append(f"{task} level {level}: decoded segments do not partition the image "
                          f"({int((count != 1).sum())} pixels covered 0 or 2+ times)")
    return equal, len(items)


CONTROL = "control:"  # key of the deliberately wrong prediction


def bad_label_control(config: str, task: dict[str, Any]) -> dict[str, Any]:
    """A copy of the task's first region with a label the config lacks: the SDK's validator must
    report it (so a clean result for ours means something)."""
    region = json.loads(json.dumps(regions_of(task["predictions"][0]["result"])[0]))
    region["value"]["brushlabels"] = ["cast-undeclared-label"]
    return {"key": f"{CONTROL}undeclared-label", "config": config, "result": [region]}


def mask_items(name: str, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every stored brush region, keyed ``"<name>:<task index>/<region id>"``."""
    return [{"key": f"{name}:{i}/{r['id']}", "rle": r["value"]["rle"], "labels": r["value"]["brushlabels"],
             "width": r["original_width"], "height": r["original_height"]}
            for i, t in enumerate(stored) for p in t["predictions"][:1] for r in regions_of(p["result"])]


def _message(body: Any) -> str:
    """The validation message of a Label Studio error response."""
    errors = body.get("validation_errors") if isinstance(body, dict) else None
    return str(errors or body)[:300]


def check_config_change(api: Api, project: int, task: dict[str, Any], config: str, result: list[dict[str, Any]]) -> dict[str, Any]:
    """The prediction submitted as an annotation, then a config without one of its labels. Label
    Studio checks labels against annotations (not predictions), and strictly only in
    ``/api/projects/<id>/validate/`` (what its UI calls before saving); a plain PATCH of the
    project only checks control tags, so it is tried last, for the record."""
    created_status, created = api.call("POST", f"/api/tasks/{task['id']}/annotations/", {"result": result})
    dropped = regions_of(result)[-1]["value"]["brushlabels"][0]
    lacking = config.replace(f'<Label value="{dropped}"', '<Label value="cast-unused-label"')
    status, body = api.call("POST", f"/api/projects/{project}/validate/", {"label_config": lacking})
    patch_status, _ = api.call("PATCH", f"/api/projects/{project}/", {"label_config": lacking})
    return {"annotation_created": created_status == 201,
            "annotation_results": len(created.get("result", [])) if isinstance(created, dict) else None,
            "label_dropped": dropped, "validate_status": status, "config_change_refused": status == 400,
            "message": _message(body) if status == 400 else None, "patch_status": patch_status}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def ls_version(ls_python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('label-studio'), m.version('label-studio-sdk'))"
    return subprocess.run([str(ls_python), "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


Projects = dict[str, tuple[str, list[dict[str, Any]]]]  # name -> (labeling config, tasks)


def exercise_server(ls_python: Path, projects: Projects, work: Path, timeout: float,
                    report: dict[str, Any], errors: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Start Label Studio, import every project, compare what it stored, try the config change;
    the server is always stopped. Returns the tasks read back, per project."""
    token, port, log = secrets.token_hex(20), free_port(), work / "server.log"
    proc = start_server(ls_python, work / "ls-data", port, token, log)
    stored, ids = {}, {}
    try:
        report["server_ready_s"] = round(wait_ready(f"http://{HOST}:{port}", proc, timeout), 1)
        api = Api(f"http://{HOST}:{port}", token)
        for name, (config, tasks) in projects.items():
            ids[name], response, stored[name] = import_project(api, f"CAST {name}", config, tasks)
            report[f"{name}_import"] = {k: response.get(k) for k in ("task_count", "prediction_count")}
            compare_tasks(name, tasks, stored[name], errors)
        config, tasks = projects["annotated"]
        check = report["config_check"] = check_config_change(api, ids["annotated"], stored["annotated"][0], config,
                                                             tasks[0]["predictions"][0]["result"])
        if not check["annotation_created"]:
            errors.append("the prediction was not accepted as an annotation")
        elif not check["config_change_refused"]:
            errors.append("a config lacking an annotated label was not refused by /validate/")
    except Exception:
        print("--- Label Studio's log (end) ---\n" + log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        stop_server(proc)
    if "Prediction validation failed" in log.read_text(errors="replace"):
        errors.append("the server logged prediction validation failures")
    return stored


def check_with_sdk(ls_python: Path, projects: Projects, stored: dict[str, list[dict[str, Any]]],
                   truth: dict[str, np.ndarray], work: Path, report: dict[str, Any], errors: list[str]) -> None:
    """The SDK's validator on the stored predictions (plus a wrong control) and its decoder on
    every stored RLE, against ours and the true masks."""
    items = [it for name in projects for it in mask_items(name, stored[name])]
    predictions = [{"key": f"{name}:{i}", "config": projects[name][0], "result": t["predictions"][0]["result"]}
                   for name in projects for i, t in enumerate(stored[name]) if t["predictions"]]
    config, tasks = projects["annotated"]
    predictions.append(bad_label_control(config, tasks[0]))
    sdk, masks = ls_decode(ls_python, items, predictions, work)
    ours = [e for e in sdk["validation"] if not e.startswith(CONTROL)]
    control = [e for e in sdk["validation"] if e.startswith(CONTROL)]
    errors += [f"validate_prediction: {e}" for e in ours[:20]]
    if not control:
        errors.append("validate_prediction accepted the control prediction with an undeclared label")
    equal, total = check_masks(items, sdk["words"], masks, {f"annotated:0/{rid}": m for rid, m in truth.items()}, errors)
    report.update({"masks_decoded_equal": f"{equal}/{total}", "sdk_validation_problems": len(ours),
                   "sdk_validation_control_refused": [e[:120] + " ... " + e[-100:] for e in control][:1]})


def run(ls_python: Path, timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    errors: list[str] = []
    versions = ls_version(ls_python).split()
    report: dict[str, Any] = {"label_studio": versions[0], "label_studio_sdk": versions[1],
                              "cli_images": list(CLI_IMAGES), "annotated_image": ANNOTATED_IMAGE}
    with tempfile.TemporaryDirectory(prefix="cast-ls-") as tmp:
        work = Path(tmp)
        cli_tasks, cli_config = export_cli(work / "export")
        ann_task, ann_config, truth = export_annotated()
        projects: Projects = {"cli": (cli_config, cli_tasks), "annotated": (ann_config, [ann_task])}
        stored = exercise_server(ls_python, projects, work, timeout, report, errors)
        check_with_sdk(ls_python, projects, stored, truth, work, report, errors)
    sent = [t for _, tasks in projects.values() for t in tasks]
    report.update({
        "tasks_sent": len(sent),
        "tasks_imported": sum(len(s) for s in stored.values()),
        "regions": sum(len(regions_of(t["predictions"][0]["result"])) for t in sent),
        "relations": sum(len(relations_of(t["predictions"][0]["result"])) for t in sent),
        "errors": errors[:50], "error_count": len(errors), "passed": not errors,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    })
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ls-python", default=DEFAULT_LS_PYTHON, help="Python of a virtualenv with label-studio installed")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server to start")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    ls_python = Path(args.ls_python)
    if not ls_python.exists() or not (ls_python.parent / "label-studio").exists():
        sys.exit(f"{ls_python}: no such Python with label-studio beside it. Make it with:\n"
                 f"  python -m venv /work/ls-venv && /work/ls-venv/bin/pip install label-studio==1.23.2")
    try:
        report = run(ls_python, args.timeout)
    except Exception as e:  # still write what happened
        report = {"label_studio": None, "label_studio_sdk": None, "tasks_imported": 0, "tasks_sent": None,
                  "regions": None, "relations": None, "masks_decoded_equal": None, "config_check": {},
                  "errors": [f"{type(e).__name__}: {e}"], "error_count": 1, "passed": False, "elapsed_s": None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"Label Studio {report['label_studio']} (sdk {report['label_studio_sdk']}): "
          f"{report['tasks_imported']}/{report['tasks_sent']} tasks imported, {report['regions']} regions, "
          f"{report['relations']} relations; masks decoded equal {report['masks_decoded_equal']}; "
          f"config change refused: {report['config_check'].get('config_change_refused')}; "
          f"{report['error_count']} errors; {report['elapsed_s']} s -> {args.out}")
    for e in report["errors"]:
        print("  " + e)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
