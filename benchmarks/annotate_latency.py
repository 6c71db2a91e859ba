"""Server time of an edit in the app's Annotate tab, on this machine (2 cores), with cast_small.

The Annotate handlers (``app.annotate.AnnotateCallbacks``) run in this process on photos segmented
by the app's engine (``app.service.Explorer``), exactly as Gradio calls them, and each handler call
is timed from its start until it returns everything the page shows (the annotate overlay PNG
written, the region tree HTML, the picked-segment summary and the label suggestions): the same
span the app's ``CAST_APP_TIMINGS=1`` log reports. Every edit is autosaved (atomic write with
fsync), as in a browser session. Gradio's queue and the browser transfer are not
included (benchmarks/app_latency.py measures those for the Explore clicks).

An edit session per photo: click a level-4 segment, add it as a region; click two level-3 parts
inside it (shift-click), add them as a part (its parent is found); click a part, extend, shrink;
relabel; undo, redo; repeated over the photo's level-4 segments. Photos: 1024x768 and
4000x3000 (12 MP: the overlay is drawn at the display size, so the photo's size should not matter).
The model is cast_small in the published DeiT layout with random weights, in our format.

Usage::

    python benchmarks/annotate_latency.py [--rounds 6] [--out benchmarks/results/annotate_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.app_latency import make_model, photos  # noqa: E402

TARGET_MS = 100.0  # click -> region updated, server time


def click_on(view, level: int, node_id: int) -> SimpleNamespace:
    """A click event (``evt.index`` = display x, y) on a pixel of the segment."""
    from cast.keys import Level

    ys, xs = np.nonzero(view.maps[Level(level)] == node_id)
    i = len(ys) // 2
    return SimpleNamespace(index=(int(xs[i]), int(ys[i])))


def edit_session(cb, view, rounds: int, times: dict[str, list[float]]) -> None:
    """Edits on one photo; appends each handler's milliseconds to ``times[name]``."""

    def timed(name: str, fn, *args) -> None:
        t = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append((time.perf_counter() - t) * 1000)
        if isinstance(out, tuple) and isinstance(out[-1], str) and out[-1].startswith("⚠"):
            raise RuntimeError(f"{name} refused: {out[-1]}")

    wholes = [n for n in view.tree.nodes_at(4) if len(n.children) >= 2][:rounds]
    for whole in wholes:
        a, b = whole.children[:2]
        timed("click", cb.on_click, view, 4, False, click_on(view, 4, whole.id))
        timed("add region", cb.add_region, view, 4, f"object {whole.id}")
        timed("click", cb.on_click, view, 3, False, click_on(view, 3, a))
        timed("shift-click", cb.on_click, view, 3, True, click_on(view, 3, b))
        timed("add region", cb.add_region, view, 3, "part")
        part = view.active
        timed("click", cb.on_click, view, 3, False, click_on(view, 3, a))
        timed("shrink", cb.shrink, view, 3)
        timed("shift-click", cb.on_click, view, 3, False, click_on(view, 3, a))
        timed("extend", cb.extend, view, 3)
        timed("relabel", cb.relabel, view, 3, "wheel")
        timed("undo", cb.undo, view, 3)
        timed("redo", cb.redo, view, 3)
        timed("region click", cb.on_region_click, view, 3, SimpleNamespace(index=part))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="level-4 segments edited per photo")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "annotate_latency.json"))
    args = ap.parse_args()

    import torch

    from app.annotate import AnnotateCallbacks
    from app.config import AppConfig
    from app.service import Explorer
    from app.view import View

    tmp = Path(tempfile.mkdtemp(prefix="cast-annotate-bench-"))
    model = make_model(tmp / "models" / "cast_small_random")
    cfg = AppConfig(default_model="bundled_flat", models_dir=tmp / "models", precompute_examples=False, temp_dir=tmp / "app",
                    autosave_dir=tmp / "autosave")
    explorer = Explorer(cfg)
    cb = AnnotateCallbacks(explorer)

    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                    "model": "cast_small (random weights)", "target_ms": TARGET_MS, "photos": {}}
    for size in [(1024, 768), (4000, 3000)]:
        path = tmp / f"photo_{size[0]}x{size[1]}.jpg"
        Image.fromarray(photos(1, size=size, seed=size[0])[0]).save(path, quality=90)
        result = explorer.segment(path, str(model.resolve()))
        view = View.of(result)
        explorer.sessions.register(view)
        view.autosave = explorer.autosave.path(uuid.uuid4().hex, result.sha1, result.model)  # as for a browser page
        cb.show(view, 4)  # the tab opened
        times: dict[str, list[float]] = {}
        edit_session(cb, view, args.rounds, times)
        per = {name: {"n": len(v), "median_ms": round(statistics.median(v), 1), "max_ms": round(max(v), 1)}
               for name, v in times.items()}
        every = [t for v in times.values() for t in v]
        name = f"{size[0]}x{size[1]}"
        report["photos"][name] = {
            "handlers": per,
            "all_edits": {"n": len(every), "median_ms": round(statistics.median(every), 1),
                          "p95_ms": round(float(np.percentile(every, 95)), 1), "max_ms": round(max(every), 1)},
            "regions_at_end": len(view.annotations),
        }
        print(name, json.dumps(report["photos"][name]["all_edits"]))
        for h, s in per.items():
            print(f"  {h:14s} median {s['median_ms']:6.1f} ms  max {s['max_ms']:6.1f} ms  (n={s['n']})")
    worst = max(p["all_edits"]["p95_ms"] for p in report["photos"].values())
    report["meets_target"] = worst <= TARGET_MS
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"p95 of every edit, worst photo: {worst:.1f} ms (target <= {TARGET_MS:.0f} ms) -> {args.out}")
    explorer.close()


if __name__ == "__main__":
    main()
