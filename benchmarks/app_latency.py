"""Latency of the launched web app on this machine (2 cores), with a cast_small model.

Starts ``python app.py`` in a subprocess (offline; the model is cast_small in the published DeiT
layout with random weights, saved in our format and served from a models folder: the cost does not
depend on the weights, and the benchmark needs no network), then measures:

1. upload -> full view of a 1024x768 photo through ``gradio_client``: ``/segment`` (segmentation,
   overlay, tree, panels, download files, JSON) plus fetching the overlay PNG, which is what a
   browser loads to show the view (the download files are fetched only when someone clicks them);
   also the callback's server time. Every photo is different so the result cache never answers;
2. a click -> updated overlay, tree and panel: Chromium (Playwright) clicks the overlay and tree
   nodes; server time of the click callbacks, read from the app's timing log (``CAST_APP_TIMINGS=1``),
   the masked-segment recognition that follows each click, and in the browser the time from the
   click until the new overlay image is loaded (Gradio's queue, file handling and transfer included);
3. 8 concurrent clients, each uploading its own photo at once: all answered?, p50 / p95 / max.

Usage::

    python benchmarks/app_latency.py [--runs 12] [--clicks 24] [--out benchmarks/results/app_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

TARGETS = {"upload_to_view_median_s": 1.0, "click_server_ms": 100.0}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def make_model(folder: Path) -> Path:
    """cast_small, DeiT layout, 1000 ImageNet classes, random weights, in our format."""
    import torch

    from cast.loading import build_model, save_own_format
    from cast.weights import PUBLISHED

    torch.manual_seed(0)
    model = build_model("cast_small", pos_embed="learned", num_classes=1000).eval()
    model.info = PUBLISHED["cast_small.deit_in1k"].info().with_(source="random weights (benchmark)")
    return save_own_format(model, folder)


def photos(n: int, size: tuple[int, int] = (1024, 768), seed: int = 0) -> list[np.ndarray]:
    """``n`` different 1024x768 photos: crops of scikit-image's public-domain photos, resized."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        y0, x0 = rng.integers(0, h // 6), rng.integers(0, w // 6)
        crop = src[y0: y0 + h - h // 6, x0: x0 + w - w // 6]
        out.append(np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model_dir: Path, port: int, log_path: Path, **settings: str) -> subprocess.Popen:
    """``python app.py`` on 127.0.0.1:``port``, offline, serving ``model_dir`` by default, once it
    answers; ``settings`` are more environment variables (``CAST_APP_*``) and win."""
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", HF_HUB_OFFLINE="1",
               CAST_APP_MODELS_DIR=str(model_dir.parent), CAST_APP_DEFAULT_MODEL=str(model_dir.resolve()),
               CAST_APP_PRECOMPUTE_EXAMPLES="0", CAST_APP_TIMINGS="1", GRADIO_ANALYTICS_ENABLED="False", **settings)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app did not start in 180 s")


def server_times(log_path: Path, name: str) -> list[float]:
    return [float(m) for m in re.findall(rf"timing {name} ([0-9.]+)", log_path.read_text())]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--clicks", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "app_latency.json"))
    args = ap.parse_args()

    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp(prefix="cast-app-bench-"))
    model_dir = make_model(tmp / "models" / "cast_small_random")
    port = free_port()
    log_path = tmp / "app.log"
    proc = launch(model_dir, port, log_path)
    url = f"http://127.0.0.1:{port}/"
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
                    "model": "cast_small (DeiT layout, 1000 classes, random weights)", "targets": TARGETS}
    try:
        images = photos(args.runs + 2 + 8 + 1)
        paths = []
        for i, img in enumerate(images):
            p = tmp / f"photo{i:02d}.jpg"
            Image.fromarray(img).save(p, quality=92)
            paths.append(p)

        # 1. upload -> full view
        client = Client(url, verbose=False, download_files=False)

        def view(p: Path) -> None:
            out = client.predict(handle_file(str(p)), api_name="/segment")
            overlay_url = out[0]["url"] if isinstance(out[0], dict) else out[0]
            with urllib.request.urlopen(overlay_url, timeout=30) as r:
                assert r.read(8) == b"\x89PNG\r\n\x1a\n"

        for p in paths[:2]:  # warm-up (first forward pass, lazy imports)
            view(p)
        n_before = len(server_times(log_path, "segment"))
        walls = []
        for p in paths[2: 2 + args.runs]:
            t = time.perf_counter()
            view(p)
            walls.append(time.perf_counter() - t)
        server = server_times(log_path, "segment")[n_before:]
        result["upload_to_view"] = {
            "photo": "1024x768 JPEG", "runs": len(walls), "what": "/segment via gradio_client + GET of the overlay PNG",
            "round_trip_median_s": round(statistics.median(walls), 3), "round_trip_p95_s": round(pct(walls, 95), 3),
            "server_median_s": round(statistics.median(server) / 1000, 3),
        }
        print("upload -> view", result["upload_to_view"], flush=True)

        # 2. clicks in a real browser
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("CAST_TEST_CHROMIUM", "/usr/bin/chromium"),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1600})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=60_000)
            page.set_input_files("#input-image input[type=file]", str(paths[-1]))
            page.wait_for_selector('#tree rect[data-node="L4-0"]', timeout=120_000)
            overlay = page.locator("#overlay img")
            overlay.scroll_into_view_if_needed()
            rng = np.random.default_rng(1)
            n_click = len(server_times(log_path, "on_overlay_click"))
            n_tree = len(server_times(log_path, "on_tree_click"))
            rtts, unchanged = [], 0
            for i in range(args.clicks):
                before = page.locator("#overlay img").get_attribute("src")
                t = time.perf_counter()
                if i % 2 == 0:
                    box = overlay.bounding_box()
                    overlay.click(position={"x": box["width"] * rng.uniform(0.05, 0.95),
                                            "y": box["height"] * rng.uniform(0.05, 0.95)})
                else:
                    nodes = page.locator("#tree rect[data-node^='L']")
                    nodes.nth(int(rng.integers(0, nodes.count()))).click()
                try:  # in the browser: until the new overlay is in the page (a click on the same segment changes nothing)
                    page.wait_for_function("(old) => { const i = document.querySelector('#overlay img'); "
                                           "return i && i.src !== old && i.complete; }", arg=before, timeout=5000)
                    rtts.append(time.perf_counter() - t)
                except Exception:
                    unchanged += 1
                time.sleep(0.8)  # let the recognition that follows finish
            deadline = time.time() + 60
            while time.time() < deadline and (
                len(server_times(log_path, "on_overlay_click")) - n_click + len(server_times(log_path, "on_tree_click")) - n_tree
                < args.clicks
            ):
                time.sleep(0.5)
            browser.close()
        clicks = server_times(log_path, "on_overlay_click")[n_click:]
        trees = server_times(log_path, "on_tree_click")[n_tree:]
        recog = [t for t in server_times(log_path, "recognise") if t > 1.0]  # skip the no-op (cached) calls
        both = clicks + trees
        result["click"] = {
            "clicks": len(both), "overlay_clicks": len(clicks), "tree_clicks": len(trees),
            "server_median_ms": round(statistics.median(both), 1), "server_p95_ms": round(pct(both, 95), 1),
            "overlay_click_median_ms": round(statistics.median(clicks), 1) if clicks else None,
            "tree_click_median_ms": round(statistics.median(trees), 1) if trees else None,
            "masked_recognition_median_ms": round(statistics.median(recog), 1) if recog else None,
            "browser_click_to_new_overlay_median_ms": round(1000 * statistics.median(rtts), 1) if rtts else None,
            "browser_clicks_measured": len(rtts), "browser_clicks_without_change": unchanged,
        }
        print("click", result["click"], flush=True)

        # 3. eight clients at once
        def one(p: Path) -> float:
            c = Client(url, verbose=False)
            t = time.perf_counter()
            out = c.predict(handle_file(str(p)), api_name="/segment")
            assert out[7]["schema"] == "cast-hierarchy"
            return time.perf_counter() - t

        batch = paths[2 + args.runs: 2 + args.runs + 8]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, p) for p in batch]
            lat, failed = [], 0
            for f in futures:
                try:
                    lat.append(f.result())
                except Exception as e:  # counted, not hidden
                    failed += 1
                    print("client failed:", e, flush=True)
        result["concurrent_8"] = {
            "clients": len(batch), "answered": len(lat), "failed": failed,
            "p50_s": round(pct(lat, 50), 2), "p95_s": round(pct(lat, 95), 2), "max_s": round(max(lat), 2) if lat else None,
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        print("8 clients", result["concurrent_8"], flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["met"] = {
        "upload_to_view_median": result["upload_to_view"]["round_trip_median_s"] <= TARGETS["upload_to_view_median_s"],
        "click_server_median": result["click"]["server_median_ms"] <= TARGETS["click_server_ms"],
        "all_8_answered": result["concurrent_8"]["answered"] == 8,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
