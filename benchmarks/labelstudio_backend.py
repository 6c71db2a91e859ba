"""The Label Studio backend against a live Label Studio: does everything arrive, and how fast?

What it does, with Label Studio started from its own virtualenv on 127.0.0.1 and the backend
started as users start it (``python -m cast serve-labelstudio --model bundled_flat``, a subprocess):

1. A project with the config ``python -m cast labelstudio-config`` prints; 3 photos
   (1024x768 JPEGs) uploaded as tasks (``/data/upload/...``, fetched back by the backend with the
   API token); the backend connected as *Settings -> Model -> Connect model* does (``POST /api/ml``,
   interactive on), checked: state, ``model_version``.
2. Predictions retrieved through Label Studio's own Data Manager action
   (``retrieve_tasks_predictions``); every stored region decoded by label-studio-sdk's brush
   decoder (in Label Studio's virtualenv) and compared with our own tree of the same image
   (masks, labels, ids), every relation checked (child -> parent, ``part-of``), and Label Studio's
   prediction validator run on each prediction.
3. A click sent through Label Studio's interactive endpoint: the region returned contains the click.
4. Timings: the interactive answer's time (``/predict`` with a click, called on loopback as Label
   Studio calls it) for the first click on a new 1024x768 image and for clicks on an image whose
   tree is cached; pre-annotation images/s through Label Studio (the Data Manager
   action on ``--images`` new tasks) vs ``python -m cast segment --format labelstudio`` on the same
   images (model loading excluded from both).

Results: ``benchmarks/results/labelstudio_backend.json``; non-zero exit when a check failed.
``--screenshot PNG`` also saves a task of the project as Label Studio shows it (Debian's Chromium).

    python benchmarks/labelstudio_backend.py [--images 12] [--screenshot docs/figures/labelstudio_task.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.app_latency import free_port, photos  # noqa: E402
from benchmarks.labelstudio_import import ls_decode  # noqa: E402
from cast import Predictor  # noqa: E402
from cast.exports import GRANULARITY, ls_rle_decode  # noqa: E402
from cast.labelstudio.config import labeling_config  # noqa: E402
from tests.labelstudio_server import (  # noqa: E402
    HOST,
    PASSWORD,
    USERNAME,
    Api,
    ls_python,
    missing_message,
    start_server,
    stop_server,
    wait_ready,
)

OUT = ROOT / "benchmarks" / "results" / "labelstudio_backend.json"
EXAMPLE = ROOT / "assets" / "examples" / "chelsea.jpg"  # the screenshot's photo
VALIDATE = r"""
import json, sys
from label_studio_sdk.label_interface import LabelInterface
req = json.load(sys.stdin)
li = LabelInterface(req["config"])
print(json.dumps([str(e) for p in req["predictions"] for e in (li.validate_prediction({"result": p}, return_errors=True) or [])]))
"""


def start_backend(port: int, ls: Api, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_URL": ls.base, "LABEL_STUDIO_API_KEY": ls.token}
    proc = subprocess.Popen([sys.executable, "-m", "cast", "serve-labelstudio", "--model", "bundled_flat", "--port", str(port), *extra],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the backend exited:\n" + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5):
                return proc
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the backend did not answer /health within 120 s")


def post(url: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """A JSON POST to the backend; ``(answer, seconds)``."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return out, time.perf_counter() - t


def click(w: int, h: int, fx: float, fy: float, label: str) -> dict[str, Any]:
    return {"original_width": w, "original_height": h, "image_rotation": 0, "id": "c", "from_name": "granularity",
            "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": True,
            "value": {"x": 100 * fx, "y": 100 * fy, "width": 0.6, "keypointlabels": [label]}}


def check_predictions(api: Api, config: str, tasks: dict[int, Path], python: Path, work: Path,
                      report: dict[str, Any], errors: list[str]) -> None:
    """Every stored region (decoded by the SDK) equals our tree's segment; relations; validator."""
    predictor = Predictor("bundled_flat")
    items, stored, trees = [], {}, {}
    for tid, path in tasks.items():
        preds = api.ok("GET", f"/api/predictions?task={tid}")
        if len(preds) != 1:
            errors.append(f"task {tid}: {len(preds)} predictions stored")
            continue
        stored[tid], trees[tid] = preds[0], predictor(path)
        for r in preds[0]["result"]:
            if r["type"] == "brushlabels":
                items.append({"key": f"{tid}/{r['id']}", "rle": r["value"]["rle"], "labels": r["value"]["brushlabels"],
                              "width": r["original_width"], "height": r["original_height"]})
    sdk, masks = ls_decode(python, items, [], work)
    equal = 0
    for item, packed in zip(items, masks):
        tid, rid = item["key"].split("/", 1)
        tree = trees[int(tid)]
        node = tree.node(rid)
        theirs = np.unpackbits(packed, count=item["height"] * item["width"]).reshape(item["height"], item["width"]) > 0
        same = np.array_equal(theirs, tree.label_map(node.level) == node.id)
        same &= np.array_equal(ls_rle_decode(item["rle"], theirs.shape), theirs)
        same &= item["labels"] == [GRANULARITY[node.level]]
        equal += int(same)
    if equal != len(items):
        errors.append(f"{len(items) - equal} of {len(items)} regions differ from our segments")
    relations = bad_relations = 0
    for tid, pred in stored.items():
        tree = trees[tid]
        for r in pred["result"]:
            if r["type"] != "relation":
                continue
            relations += 1
            child, parent = tree.node(r["from_id"]), tree.node(r["to_id"])
            bad_relations += int(r.get("labels") != ["part-of"] or parent.level != child.level + 1 or child.parent != parent.id)
        expected = len(tree.nodes) - len(tree.nodes_at(4))
        if sum(r["type"] == "relation" for r in pred["result"]) != expected:
            errors.append(f"task {tid}: not one part-of relation per segment below level 4")
    if bad_relations:
        errors.append(f"{bad_relations} relations do not link a segment to the segment it is part of")
    check = subprocess.run([str(python), "-c", VALIDATE], capture_output=True, text=True, timeout=300,
                           input=json.dumps({"config": config, "predictions": [p["result"] for p in stored.values()]}))
    problems = json.loads(check.stdout) if check.returncode == 0 else [check.stderr[-500:]]
    errors += [f"validate_prediction: {p}" for p in problems[:10]]
    report.update(tasks_predicted=len(stored), regions_checked=len(items), regions_equal_to_ours=equal,
                  relations_checked=relations, relations_wrong=bad_relations, sdk_validation_problems=len(problems),
                  sdk_version=sdk.get("sdk_version"))


def cli_rate(folder: Path, work: Path) -> float:
    """images/s of ``cast segment --format labelstudio`` on ``folder``, model loading excluded
    (a run on one image is timed and subtracted)."""
    def run(inputs: list[Path], out: Path) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cast", "segment", *map(str, inputs), "--model", "bundled_flat", "--out", str(out),
                        "--format", "labelstudio", "--quiet"], cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return time.perf_counter() - t

    files = sorted(folder.glob("*.jpg"))
    one = run(files[:1], work / "one")
    every = run(files, work / "all")
    return (len(files) - 1) / max(every - one, 1e-6)


def throughput(api: Api, burl: str, config: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Pre-annotation images/s through Label Studio (the Data Manager action on new tasks) and of
    the CLI on the same images; ``--rounds`` rounds of new images (never in the backend's cache)."""
    via_ls, cli = [], []
    for r in range(args.rounds):
        folder = work / f"rate{r}"
        folder.mkdir()
        for i, im in enumerate(photos(args.images, seed=100 + r)):
            Image.fromarray(im).save(folder / f"photo{i:02d}.jpg", quality=90)
        files = sorted(folder.glob("*.jpg"))
        project = api.ok("POST", "/api/projects", {"title": f"CAST throughput {r}", "label_config": config})["id"]
        api.upload(project, files)
        api.ok("POST", "/api/ml", {"title": "CAST", "url": burl, "project": project, "is_interactive": False})
        t = time.perf_counter()
        out = api.ok("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
                     {"selectedItems": {"all": True, "excluded": []}})
        via_ls.append(len(files) / (time.perf_counter() - t))
        if out.get("processed_items") != len(files):
            raise RuntimeError(f"round {r}: {out}")
        cli.append(cli_rate(folder, work / f"cli{r}"))
    ls_rate, cli_rate_ = statistics.median(via_ls), statistics.median(cli)
    return {"images_per_round": args.images, "rounds": args.rounds,
            "via_label_studio_images_per_s": [round(v, 2) for v in via_ls], "cli_images_per_s": [round(v, 2) for v in cli],
            "median_via_label_studio": round(ls_rate, 2), "median_cli": round(cli_rate_, 2), "ratio": round(ls_rate / cli_rate_, 2)}


def screenshot(base: str, project: int, task: int, path: Path) -> None:
    """The task in Label Studio's labeling view, its prediction (our regions and relations) shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(f"{base}/user/login/")
        page.fill("input[name=email]", USERNAME)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
        page.goto(f"{base}/projects/{project}/data?tab=0&task={task}")
        page.wait_for_selector(".lsf-relations, [class*=relations]", state="attached", timeout=60_000)
        page.wait_for_timeout(3000)  # let the canvas finish drawing the masks (a screenshot, not a check)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        browser.close()


def run(args: argparse.Namespace, work: Path, report: dict[str, Any], errors: list[str]) -> None:
    python = Path(args.ls_python)
    if not (python.parent / "label-studio").exists():
        raise SystemExit(missing_message(python))
    folder = work / "photos"
    folder.mkdir()
    for i, im in enumerate(photos(3 + 5, seed=7)):
        Image.fromarray(im).save(folder / f"photo{i:02d}.jpg", quality=90)
    files = sorted(folder.glob("*.jpg"))
    check_files, fresh_files = files[:3], files[3:]
    token, port = secrets.token_hex(20), free_port()
    ls_proc = start_server(python, work / "ls-data", port, token, work / "ls.log")
    backend = None
    try:
        report["label_studio_ready_s"] = round(wait_ready(f"http://{HOST}:{port}", ls_proc, args.timeout), 1)
        api = Api(f"http://{HOST}:{port}", token)
        report["label_studio"] = api.ok("GET", "/api/version").get("release")
        bport = free_port()
        backend = start_backend(bport, api, work / "backend.log")
        burl = f"http://{HOST}:{bport}"
        config = labeling_config()
        project = api.ok("POST", "/api/projects", {"title": "CAST backend check", "label_config": config})["id"]
        tids = api.upload(project, check_files)
        ml = api.ok("POST", "/api/ml", {"title": "CAST", "url": burl, "project": project, "is_interactive": True})
        report["connect"] = {"state": ml["state"], "model_version": ml["model_version"]}
        if ml["state"] != "CO" or ml["model_version"] != "bundled_flat":
            errors.append(f"connect: state {ml['state']}, model_version {ml['model_version']!r}")
        api.ok("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
               {"selectedItems": {"all": True, "excluded": []}})
        check_predictions(api, config, dict(zip(tids, check_files)), python, work, report, errors)

        # a click through Label Studio's interactive endpoint
        w, h = Image.open(check_files[0]).size
        answer = api.ok("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                        {"task": tids[0], "context": {"result": [click(w, h, 0.5, 0.5, "part")]}})
        (region,) = answer["data"]["result"]
        mask = ls_rle_decode(region["value"]["rle"], (h, w))
        report["interactive_region_contains_click"] = bool(mask[h // 2, w // 2])
        if not mask[h // 2, w // 2]:
            errors.append("the interactive answer does not contain the click")

        # timings: clicks straight to the backend (its server time), first on new images, then cached
        first, cached = [], []
        fresh = api.ok("POST", "/api/projects", {"title": "CAST clicks", "label_config": config})["id"]  # no backend:
        for f in fresh_files:  # reading its tasks does not trigger predictions, so each first click is a first
            ref = api.upload(fresh, [f])[0]
            task = api.ok("GET", f"/api/tasks/{ref}")
            body = {"tasks": [task], "project": f"{fresh}.0", "label_config": config,
                    "params": {"context": {"result": [click(w, h, 0.4, 0.6, "part")]}}}
            first.append(post(f"{burl}/predict", body)[1])
            for fx in (0.2, 0.5, 0.8):
                body["params"]["context"]["result"] = [click(w, h, fx, 0.5, "sub-part")]
                cached.append(post(f"{burl}/predict", body)[1])
        report["click_first_s"] = {"median": round(statistics.median(first), 3), "max": round(max(first), 3), "n": len(first)}
        report["click_cached_s"] = {"median": round(statistics.median(cached), 4), "p95": round(float(np.percentile(cached, 95)), 4),
                                    "n": len(cached)}

        # pre-annotation throughput through Label Studio vs the CLI on the same images
        report["preannotate"] = throughput(api, burl, config, args, work)
        if args.screenshot:  # wholes and parts only (--levels 3,4), so the picture stays readable
            backend.terminate()
            backend.wait(timeout=30)
            backend = start_backend(bport, api, work / "backend-shot.log", "--levels", "3,4")
            shot = api.ok("POST", "/api/projects", {"title": "CAST wholes and parts", "label_config": labeling_config(levels=(3, 4))})["id"]
            (tid,) = api.upload(shot, [EXAMPLE])
            api.ok("POST", "/api/ml", {"title": "CAST", "url": burl, "project": shot, "is_interactive": True})
            api.ok("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={shot}",
                   {"selectedItems": {"all": True, "excluded": []}})
            screenshot(api.base, shot, tid, Path(args.screenshot))
            report["screenshot"] = str(Path(args.screenshot).resolve().relative_to(ROOT))
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(timeout=30)
        stop_server(ls_proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ls-python", default=str(ls_python()), help="Python of a virtualenv with label-studio installed")
    ap.add_argument("--images", type=int, default=12, help="new tasks per round of the pre-annotation throughput")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the throughput comparison (medians reported)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for Label Studio to start")
    ap.add_argument("--screenshot", default=None, help="save a task as Label Studio shows it (PNG)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "model": "bundled_flat"}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cast-ls-backend-") as tmp:
        run(args, Path(tmp), report, errors)
    report["errors"] = errors
    report["ok"] = not errors
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
