"""Pre-annotation throughput of ``python -m cast segment`` on this machine, with cast_small.

Each configuration runs the CLI as its own process (``--format coco,labelstudio``: COCO + Label
Studio files for the whole folder, refined label maps at the photo's resolution) on the same folder
of 640x480 JPEG photos, into a fresh output folder, and reports images/s over the whole run (model
loading excluded: it is timed separately by a run on one image and subtracted) and the run's peak
memory (max RSS of the main process and of its worker processes, whichever is largest).

"One at a time" (``--batch-size 1 --workers 0``) is the path before batching: read, superpixels,
forward and write, image after image, in one process. The model is cast_small in the published
DeiT layout with random weights, saved in our format (the cost does not depend on the weights,
and the benchmark needs no network).

Usage::

    python benchmarks/preannotate.py [--images 96] [--out benchmarks/results/preannotate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from benchmarks.app_latency import make_model, photos  # noqa: E402

# (name, batch size, DataLoader workers, writer processes)
CONFIGS = [
    ("one at a time", 1, 0, 0),
    ("batch 8", 8, 0, 0),
    ("batch 8, 1 worker", 8, 1, 0),
    ("batch 8, 1 writer", 8, 0, 1),
    ("batch 8, 1 worker, 1 writer", 8, 1, 1),
    ("batch 8, 2 workers, 1 writer", 8, 2, 1),
    ("batch 8, 2 workers, 2 writers (default)", 8, 2, 2),
    ("batch 8, 4 workers, 4 writers", 8, 4, 4),
]


def run_cli(folder: Path, model: Path, out: Path, batch: int, workers: int, writers: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, largest of the CLI and its workers) of one CLI run."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cast", "segment", str(folder), "--model", str(model), "--out", str(out),
           "--format", "coco,labelstudio", "--batch-size", str(batch), "--workers", str(workers), "--writers", str(writers), "--quiet"]
    # a wrapper process per run, so its children's peak RSS is this run's (the CLI or a worker)
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, check=True, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - t
    return wall, int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "preannotate.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cast-preannotate-"))
    model = make_model(tmp / "models" / "cast_small_random")
    folder, one = tmp / "photos", tmp / "one"
    folder.mkdir()
    one.mkdir()
    for i, img in enumerate(photos(args.images, size=(640, 480))):
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)
    shutil.copy(folder / "photo0000.jpg", one / "photo0000.jpg")

    startup, _ = run_cli(one, model, tmp / "out-one", 1, 0, 0)  # imports + model load + one image
    rows = []
    for name, batch, workers, writers in CONFIGS:
        wall, rss = run_cli(folder, model, tmp / "out", batch, workers, writers)
        coco = json.loads((tmp / "out" / "coco.json").read_text())
        assert len(coco["images"]) == args.images, "every photo is in the COCO file"
        rate = (args.images - 1) / max(wall - startup, 1e-6)
        rows.append({"config": name, "batch_size": batch, "workers": workers, "writers": writers, "wall_s": round(wall, 1),
                     "images_per_s": round(rate, 2), "peak_rss_mib": round(rss)})
        print(rows[-1], flush=True)
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup"] = round(r["images_per_s"] / base, 2)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": "cast_small (DeiT layout, 1000 classes, random weights), refined maps",
        "images": f"{args.images} JPEG photos 640x480", "formats": "coco,labelstudio",
        "startup_s": round(startup, 1),
        "how": "images/s = (images - 1) / (wall - startup), startup = a run on one image (imports, model load)",
        "runs": rows,
        "best": max(rows, key=lambda r: r["images_per_s"])["config"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
