"""Memory of ``python -m cast segment`` over a large folder: flat in the number of images?

Runs the pre-annotation CLI (defaults: batch 8, 2 DataLoader workers, 2 writer processes;
``--format json,coco,labelstudio``) on ``--images`` different 1024x768 JPEG photos with cast_small
(published DeiT layout, random weights, our format; offline), and samples every 0.25 s the
resident memory of the CLI process (VmRSS) and of the whole process tree (the sum of PSS over the
CLI and its workers and writers: shared pages counted once) together with the number of images
done (their part files), and the largest child's VmRSS (a child whose PSS grows while its RSS
stays is only un-sharing pages inherited from the CLI, copy-on-write). Reported: peak RSS of the main
process and of the whole process tree per 50 images done, and the growth from the first
tenth of the run to the end (a leak would grow with the count).

Usage::

    python benchmarks/cli_memory.py [--images 500] [--out benchmarks/results/cli_memory.json]
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


def rss_kib(pid: int, field: str = "VmRSS:", source: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{source}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in forked workers) split between the
    processes that share them, so a sum over processes counts them once."""
    return rss_kib(pid, "Pss:", "smaps_rollup")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc: no psutil needed)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_memory.json"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cast-cli-memory-"))
    model = make_model(tmp / "models" / "cast_small_random")
    folder, out = tmp / "photos", tmp / "out"
    folder.mkdir()
    for i, img in enumerate(photos(args.images, size=(1024, 768), seed=3)):
        Image.fromarray(img).save(folder / f"photo{i:04d}.jpg", quality=90)
    cmd = [sys.executable, "-m", "cast", "segment", str(folder), "--model", str(model), "--out", str(out),
           "--format", "json,coco,labelstudio", "--quiet"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    samples = []  # (seconds, images done, main KiB, tree KiB)
    while proc.poll() is None:
        parts = out / ".parts"
        done = len(list(parts.glob("*.coco.json"))) if parts.is_dir() else 0
        main_kib = rss_kib(proc.pid)
        kids = children(proc.pid)
        tree_kib = pss_kib(proc.pid) + sum(pss_kib(c) for c in kids)
        child_kib = max([rss_kib(c) for c in kids] or [0])
        samples.append((time.monotonic() - t0, done, main_kib, tree_kib, child_kib))
        time.sleep(0.25)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, f"the CLI failed ({proc.returncode})"
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == args.images

    step = 50
    by_count = []
    for lo in range(0, args.images, step):
        window = [s for s in samples if lo < s[1] <= lo + step]
        if window:
            by_count.append({"images_done": lo + step, "main_peak_mib": round(max(s[2] for s in window) / 1024),
                             "all_processes_pss_peak_mib": round(max(s[3] for s in window) / 1024),
                             "largest_child_rss_peak_mib": round(max(s[4] for s in window) / 1024)})
    first = [s for s in samples if 0 < s[1] <= args.images // 10]
    last = [s for s in samples if s[1] > args.images * 9 // 10]
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": "cast_small (DeiT layout, 1000 classes, random weights), refined maps",
        "images": f"{args.images} different JPEG photos 1024x768",
        "command": "python -m cast segment PHOTOS --out OUT --format json,coco,labelstudio (defaults: batch 8, 2 workers, 2 writers)",
        "wall_s": round(wall, 1), "images_per_s": round(args.images / wall, 2),
        "peak_rss_by_images_done": by_count,
        "main_peak_first_tenth_mib": round(max(s[2] for s in first) / 1024) if first else None,
        "main_peak_last_tenth_mib": round(max(s[2] for s in last) / 1024) if last else None,
        "all_pss_peak_first_tenth_mib": round(max(s[3] for s in first) / 1024) if first else None,
        "all_pss_peak_last_tenth_mib": round(max(s[3] for s in last) / 1024) if last else None,
    }
    if first and last:
        result["main_growth_first_to_last_tenth_mib"] = result["main_peak_last_tenth_mib"] - result["main_peak_first_tenth_mib"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
