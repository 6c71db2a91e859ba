"""The Ray engine against the local engine on this machine, and the per-stage costs a cluster is
sized from.

1. ``cast segment --format coco,labelstudio`` on the same 48 photos (1024x768 JPEGs), with the
   flat bundled model (bundled_flat) and with cast_small (published DeiT layout, random weights, our format), once
   with ``--engine local`` (its defaults: batch 8, 2 workers, 2 writers) and once with
   ``--engine ray`` (a local Ray instance started by the command; batch 8, one model actor):
   images/s over the whole command (model loading and Ray's start included, as a user waits for
   them; the rate without the fixed start-up cost is also given: the run on one image is timed and
   subtracted) and the peak memory of the whole process tree (the sum of PSS, sampled every 0.2 s).
2. Per-stage costs, in one process, one core (``torch.set_num_threads(1)``): reading, decoding
   and superpixels per image; the forward pass per batch of 8; building, refining and writing the
   outputs per image. From them, the expected images/s of a cluster with N CPU cores and G GPUs.

    python benchmarks/ray_engine.py [--images 48] [--out benchmarks/results/ray_engine.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from benchmarks.app_latency import make_model, photos  # noqa: E402
from benchmarks.cli_memory import children, pss_kib  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "ray_engine.json"


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak PSS (MiB) of the process tree of one command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(pss_kib(p) for p in [proc.pid, *children(proc.pid)]))
            stop.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return time.perf_counter() - t, peak[0] / 1024


def compare(model: str, files: list[Path], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for engine in ("local", "ray"):
        common = [sys.executable, "-m", "cast", "segment", "--model", model, "--format", "coco,labelstudio", "--quiet",
                  "--engine", engine, "--batch-size", "8"]
        one, _ = run([*common, str(files[0]), "--out", str(work / f"{engine}-one")])
        every, peak = run([*common, *map(str, files), "--out", str(work / f"{engine}-all")])
        out[engine] = {"seconds": round(every, 1), "images_per_s": round(len(files) / every, 2),
                       "images_per_s_without_start": round((len(files) - 1) / max(every - one, 1e-6), 2),
                       "start_s": round(one, 1), "peak_pss_mib": round(peak)}
    for key in ("images_per_s", "images_per_s_without_start"):
        out[f"ratio_{key}"] = round(out["ray"][key] / out["local"][key], 2)
    out["ratio_peak_memory"] = round(out["ray"]["peak_pss_mib"] / out["local"]["peak_pss_mib"], 2)
    return out


def stage_costs(model: str, files: list[Path]) -> dict[str, float]:
    """Seconds per image (per batch of 8 for the forward pass) of each stage on one core."""
    import torch

    from cast import load_segmenter
    from cast.batch import BatchJob, write_outputs

    torch.set_num_threads(1)
    seg = load_segmenter(model)
    data = [f.read_bytes() for f in files[:16]]
    t = time.perf_counter()
    items = []
    for d in data:
        buf = io.BytesIO(d)
        buf.name = "x.jpg"
        items.append(seg.prepare(buf))
    prepare = (time.perf_counter() - t) / len(items)
    with torch.inference_mode():
        seg.read_batch(items[:8])  # warm up
        t = time.perf_counter()
        readouts = seg.read_batch(items[:8]) + seg.read_batch(items[8:16])
        forward = (time.perf_counter() - t) / 2
    with tempfile.TemporaryDirectory() as tmp:
        job = BatchJob([f"x{i}.jpg" for i in range(16)], [f"x{i}" for i in range(16)], Path(tmp), ("json", "coco", "labelstudio"))
        (Path(tmp) / ".parts").mkdir()
        t = time.perf_counter()
        for i, (item, ro) in enumerate(zip(items, readouts)):
            write_outputs(job, seg, i, item, ro)
        write = (time.perf_counter() - t) / len(items)
    return {"prepare_s_per_image": round(prepare, 4), "forward_s_per_batch_of_8_cpu": round(forward, 4),
            "write_s_per_image": round(write, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "images": args.images,
                              "image_size": "1024x768 JPEG"}
    with tempfile.TemporaryDirectory(prefix="cast-ray-bench-") as tmp:
        work = Path(tmp)
        folder = work / "photos"
        folder.mkdir()
        for i, im in enumerate(photos(args.images, seed=11)):
            Image.fromarray(im).save(folder / f"photo{i:03d}.jpg", quality=90)
        files = sorted(folder.glob("*.jpg"))
        small = make_model(work / "cast_small")
        for name, model in (("bundled_flat", "bundled_flat"), ("cast_small", str(small))):
            report[name] = {"engines": compare(model, files, work / name), "stages_one_core": stage_costs(model, files)}
            shutil.rmtree(work / name, ignore_errors=True)
            print(name, json.dumps(report[name]), file=sys.stderr)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
