"""How label maps should reach the photo's resolution: a small study of boundary refinement.

The model decides segments at its working size (160 px for the bundled models); a photo is larger.
On PartShapes test scenes rendered at 640 px (exact part masks at that size) the flat bundled model's
level-1 segments are carried to 640 px by each method below, and compared with the same scenes
rendered at 160 px, where the working map is the answer itself:

- ``nearest``: nearest-neighbour lookup (what earlier versions exported);
- ``watershed``: OpenCV's marker watershed on the photo, markers = the nearest map away from a
  band of 2 working pixels around boundaries;
- ``slic_vote``: scikit-image SLIC at 640 px with 8x as many superpixels, each taking the
  majority segment of the nearest map;
- ``colour_superpixels``: the chosen band colour assignment (``cast.refine``) applied to the
  superpixel map (level 1 then follows through the tree);
- ``colour_level1`` (chosen): the same on the level-1 map, as ``cast.refine`` does by default,
  without and with its smoothing (blur 1 px, 3 x 3 median).

Metrics at level 1: oracle part mIoU, part-boundary recall within 2 px (share of true part
boundary pixels with a predicted boundary within 2 px), boundary F-score; and the time of the
refinement step. Then the timing of the chosen method at 1024x768 and at 24 MP (refined at its
8 MP cap). Results: ``benchmarks/results/refinement_study.json``.

    python benchmarks/refinement_study.py [--n 40] [--timing-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

import cast  # noqa: E402
from cast.refine import RefineSettings, axis_map, band_of, refine_labels  # noqa: E402
from train.data.partshapes import render  # noqa: E402
from train.metrics import boundaries, boundary_f, miou, oracle_labels  # noqa: E402


def nearest(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    H, W = image.shape[:2]
    return labels[axis_map(H, labels.shape[0])][:, axis_map(W, labels.shape[1])]


def watershed(image: np.ndarray, labels: np.ndarray, ring: int = 2) -> np.ndarray:
    H, W = image.shape[:2]
    up = nearest(image, labels)
    band = band_of(labels, ring)[axis_map(H, labels.shape[0])][:, axis_map(W, labels.shape[1])]
    markers = (up + 1).astype(np.int32)
    markers[band] = 0
    lost = np.setdiff1d(np.unique(up), np.unique(markers[markers > 0] - 1))
    if lost.size:  # a segment entirely on the band keeps its pixels as its marker
        keep = np.isin(up, lost)
        markers[keep] = up[keep] + 1
    markers = np.ascontiguousarray(markers)
    cv2.watershed(np.ascontiguousarray(image), markers)
    out = markers - 1
    out[out < 0] = up[out < 0]  # the watershed's own boundary pixels
    return out


def slic_vote(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import slic

    up = nearest(image, labels).astype(np.int64)
    seg = slic(image, n_segments=8 * (int(labels.max()) + 1), compactness=10, start_label=0)
    k = int(up.max()) + 1
    counts = np.bincount(seg.ravel() * k + up.ravel(), minlength=(int(seg.max()) + 1) * k).reshape(-1, k)
    return counts.argmax(1)[seg]


def recall(pred: np.ndarray, gt: np.ndarray, tolerance: int = 2) -> float:
    pb, gb = boundaries(pred), boundaries(gt)
    disk = np.hypot(*np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]) <= tolerance
    return float((gb & ndimage.binary_dilation(pb, structure=disk)).sum() / max(gb.sum(), 1))


def study(n: int) -> dict:
    predictor = cast.Predictor("bundled_flat", refine=False)
    plain = RefineSettings(blur=0.0, clean=0)
    methods = {
        "nearest": lambda img, tree: nearest(img, tree.working_label_map(1)),
        "watershed": lambda img, tree: watershed(img, tree.working_label_map(1)),
        "slic_vote": lambda img, tree: slic_vote(img, tree.working_label_map(1)),
        "colour_superpixels": lambda img, tree: tree.superpixel_to_level1[
            refine_labels(img, tree.working_superpixels.astype(np.int64), tree.working_image)],
        "colour_level1_unsmoothed": lambda img, tree: refine_labels(img, tree.working_label_map(1), tree.working_image, plain),
        "colour_level1 (chosen)": lambda img, tree: refine_labels(img, tree.working_label_map(1), tree.working_image),
    }
    scores: dict[str, dict[str, list[float]]] = {m: {"miou": [], "recall": [], "boundary_f": [], "ms": []} for m in methods}
    at_160: dict[str, list[float]] = {"miou": [], "recall": [], "boundary_f": []}
    for i in range(n):
        small = render(i, "test", image_size=160)
        l1 = predictor(small.image).label_maps[0]
        at_160["miou"].append(miou(oracle_labels(l1, small.part_mask), small.part_mask))
        at_160["recall"].append(recall(l1, small.part_mask))
        at_160["boundary_f"].append(boundary_f(l1, small.part_mask))
        big = render(i, "test", image_size=640)
        tree = predictor(big.image)
        for name, fn in methods.items():
            t = time.perf_counter()
            labels = fn(big.image, tree)
            s = scores[name]
            s["ms"].append(1000 * (time.perf_counter() - t))
            s["miou"].append(miou(oracle_labels(labels, big.part_mask), big.part_mask))
            s["recall"].append(recall(labels, big.part_mask))
            s["boundary_f"].append(boundary_f(labels, big.part_mask))
    mean = lambda d: {k: round(float(np.mean(v)), 4) for k, v in d.items()}  # noqa: E731
    return {"scenes": n, "size": 640, "model_size": 160, "at_model_size": mean(at_160),
            "methods": {m: mean(s) for m, s in scores.items()}}


def timing() -> dict:
    """The chosen refinement inside ``cast.Predictor`` (cast_small, random weights), 1024x768 JPEG
    (median of 7) and 24 MP JPEG (median of 3, refined at the 6 MP cap): the refine stage, and
    the whole call with and without refinement (decoding at the refinement size, maps, areas)."""
    import timm
    from skimage import data

    model = timm.create_model("cast_small", num_classes=1000).eval()
    refined, plain = cast.Predictor(model), cast.Predictor(model, refine=False)
    out = {}
    base = Image.fromarray(data.coffee())
    for name, size, repeats in (("1024x768", (1024, 768), 7), ("24mp", (6000, 4000), 3)):
        path = ROOT / "benchmarks" / "results" / f"_refine_{name}.jpg"
        base.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        try:
            runs = [refined(path).timings for _ in range(repeats + 1)][1:]  # the first call warms up
            plain_runs = [plain(path).timings for _ in range(repeats + 1)][1:]
        finally:
            path.unlink()
        total = statistics.median(r["total"] for r in runs)
        without = statistics.median(r["total"] for r in plain_runs)
        out[name] = {"refine_stage_ms": round(1000 * statistics.median(r["refine"] for r in runs), 1),
                     "total_ms": round(1000 * total, 1), "total_without_refinement_ms": round(1000 * without, 1),
                     "added_by_refinement_ms": round(1000 * (total - without), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refinement_study.json"))
    parser.add_argument("--timing-only", action="store_true", help="measure the timing again, keep the study in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = json.loads(Path(args.out).read_text())["study"] if args.timing_only else None
    results = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "study": kept or study(args.n), "timing": timing()}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
