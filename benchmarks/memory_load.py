"""Memory of the web app under a crowd of sessions, on this machine (2 cores), with cast_small.

Starts ``python app.py`` in a subprocess (offline; cast_small in the published DeiT layout with
random weights, saved in our format: the cost does not depend on the weights), waits until it is
idle, then lets ``--sessions`` clients (``gradio_client``, each its own Gradio session, a few at a
time) upload a different 24-megapixel JPEG each (6000x4000) to ``/segment``. The app's resident
memory (VmRSS) is sampled every 0.2 s throughout. Reported: idle RSS (model loaded, nothing
segmented), RSS after one photo (a warm-up session: what the first big photo leaves in any
process), peak RSS during the crowd and its growth over idle, RSS when the last answer came, and
RSS after the session lifetime (``CAST_APP_SESSION_TTL``,
shortened here to ``--ttl`` seconds so the run ends; the app's default is 30 minutes) has passed
for every session. Every upload must be answered.

Usage::

    python benchmarks/memory_load.py [--sessions 100] [--clients 4] [--ttl 300] [--out benchmarks/results/memory_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.app_latency import free_port, make_model  # noqa: E402
from benchmarks.app_latency import launch as launch_app  # noqa: E402

TARGETS = {"peak_growth_gib": 1.0}
SIZE = (6000, 4000)  # 24 MP


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``every`` seconds: ``(t, MiB)``."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mib(self.pid)))
            except OSError:
                return
            time.sleep(self.every)

    def peak(self, t0: float = 0.0, t1: float = float("inf")) -> float:
        return max(m for t, m in self.samples if t0 <= t <= t1)


def photo_24mp(i: int, path: Path) -> Path:
    """A different 24 MP JPEG per ``i``: a random crop of one of scikit-image's photos, enlarged,
    with its own colour shift and noise (so no two files are alike and the result cache never answers)."""
    from skimage import data

    rng = np.random.default_rng(i)
    src = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()][i % 4]
    h, w = src.shape[:2]
    y0, x0 = rng.integers(0, h // 5), rng.integers(0, w // 5)
    crop = src[y0: y0 + h - h // 5, x0: x0 + w - w // 5].astype(np.int16)
    crop = np.clip(crop + rng.integers(-20, 20, 3) + rng.normal(0, 4, crop.shape), 0, 255).astype(np.uint8)
    Image.fromarray(crop).resize(SIZE, Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def launch(model_dir: Path, tmp: Path, port: int, ttl: int) -> subprocess.Popen:
    return launch_app(model_dir, port, tmp / "app.log", CAST_APP_TIMINGS="0", CAST_APP_SESSION_TTL=str(ttl),
                      CAST_APP_TEMP_DIR=str(tmp / "app"), CAST_APP_AUTOSAVE_DIR=str(tmp / "autosave"),
                      GRADIO_TEMP_DIR=str(tmp / "gradio"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--clients", type=int, default=4, help="uploads in flight at once")
    ap.add_argument("--ttl", type=int, default=300, help="session lifetime given to the app (seconds)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_load.json"))
    args = ap.parse_args()

    from gradio_client import Client, handle_file
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="cast-memory-bench-"))
    model_dir = make_model(tmp / "models" / "cast_small_random")
    print("making photos", flush=True)
    paths = [photo_24mp(i, tmp / f"photo{i:03d}.jpg") for i in tqdm(range(args.sessions))]
    port = free_port()
    proc = launch(model_dir, tmp, port, args.ttl)
    url = f"http://127.0.0.1:{port}/"
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        time.sleep(10)  # the default model loads at start; let it settle
        idle = rss_mib(proc.pid)
        print(f"idle: {idle:.0f} MiB", flush=True)
        answered, errors, walls = [], [], []
        lock = threading.Lock()
        # one photo first, in its own session: what the first big photo leaves in any process
        # (torch's and OpenCV's buffers, imports done on first use); that session expires too
        warm_path = photo_24mp(10_000, tmp / "warm-up.jpg")
        Client(url, verbose=False, download_files=False).predict(handle_file(str(warm_path)), api_name="/segment")
        time.sleep(3)
        warm = rss_mib(proc.pid)
        print(f"after one photo: {warm:.0f} MiB", flush=True)

        def one(p: Path) -> None:
            t = time.perf_counter()
            try:
                client = Client(url, verbose=False, download_files=False)  # a session of its own
                out = client.predict(handle_file(str(p)), api_name="/segment")
                assert any(isinstance(o, str) and "6000×4000" in o for o in out), out  # the status line names the size
                with lock:
                    answered.append(p.name)
                    walls.append(time.perf_counter() - t)
            except Exception as e:  # counted, not fatal: "all answered" is what is measured
                with lock:
                    errors.append(f"{p.name}: {e!r}"[:300])

        t_start = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool, tqdm(total=len(paths), desc="sessions") as bar:
            for _ in pool.map(one, paths):
                bar.update()
        t_end = time.monotonic()
        at_end = rss_mib(proc.pid)
        peak = sampler.peak(t_start, t_end)
        print(f"answered {len(answered)}/{len(paths)}; peak {peak:.0f} MiB (+{peak - idle:.0f}); at end {at_end:.0f} MiB",
              flush=True)
        wait = args.ttl + min(60, max(1, args.ttl / 10)) + 15  # the lifetime, one sweep, a margin
        print(f"waiting {wait:.0f} s for the session lifetime to pass", flush=True)
        time.sleep(wait)
        after = rss_mib(proc.pid)
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "model": "cast_small (DeiT layout, 1000 classes, random weights)",
            "targets": TARGETS,
            "photo": "6000x4000 JPEG (24 MP), a different one per session",
            "sessions": len(paths), "clients_at_once": args.clients, "session_ttl_s": args.ttl,
            "app_settings": "defaults (session_memory_mb 1024, disk_cache_mb 4096, 2 workers)",
            "answered": len(answered), "errors": errors[:10],
            "run_s": round(t_end - t_start, 1),
            "upload_to_answer_median_s": round(float(np.median(walls)), 2) if walls else None,
            "rss_idle_mib": round(idle), "rss_peak_mib": round(peak), "peak_growth_mib": round(peak - idle),
            "peak_growth_gib": round((peak - idle) / 1024, 3),
            "rss_after_one_photo_mib": round(warm),
            "rss_at_last_answer_mib": round(at_end), "rss_after_lifetime_mib": round(after),
            "after_lifetime_over_idle_mib": round(after - idle),
            "after_lifetime_over_one_photo_mib": round(after - warm),
            "rss_timeline_mib": [[round(t - t_start, 1), round(m)] for t, m in sampler.samples[::25]],
        }
        result["met"] = {"all_answered": len(answered) == len(paths),
                         "peak_growth_gib": result["peak_growth_gib"] <= TARGETS["peak_growth_gib"]}
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_timeline_mib"}, indent=1))


if __name__ == "__main__":
    main()
