"""Latency benchmark of the model library on CPU (batch 1, 2 threads by default).

Measures, in one run:
- cast_small forward vs timm ``vit_small_patch16_224`` forward (interleaved, medians, ratio);
- cast_small eager vs ``torch.compile`` (batch 1 and 8; compile time, interleaved medians);
- the farthest-point-sampling share of cast_small's forward;
- SEEDS and SLIC at 224 px and at 1024 px;
- ``cast.Predictor`` end to end on a 1024x768 photo (median) and on a 24-megapixel photo
  (time and peak RSS, in a fresh subprocess so that the peak is its own);
- parameters and GFLOPs (multiply-adds, counted by ``torch.utils.flop_counter``) of cast_tiny,
  cast_small and vit_small at 224 px.

Weights are random (DeiT layout, 1000-class head): the cost does not depend on them, and the
benchmark needs no network. Usage::

    python benchmarks/latency.py [--threads 2] [--repeats 30] [--out benchmarks/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def photo(width: int, height: int) -> np.ndarray:
    """A real photograph (scikit-image's public-domain 'coffee') resized to width x height."""
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.BICUBIC))


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def gmacs(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2e9  # FLOPs = 2 x multiply-adds


def forward_comparison(repeats: int) -> dict:
    import timm

    import cast

    img = photo(224, 224)
    sp = torch.from_numpy(cast.superpixels(img))[None]
    x = torch.randn(1, 3, 224, 224)
    n_sp = int(sp.max()) + 1
    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000).eval()
    vit = timm.create_model("vit_small_patch16_224").eval()
    cast_ms, vit_ms = [], []
    with torch.inference_mode():
        for _ in range(6):  # interleave so that machine noise hits both alike
            cast_ms.append(median_ms(lambda: model(x, sp, n_sp), max(3, repeats // 6)))
            vit_ms.append(median_ms(lambda: vit(x), max(3, repeats // 6)))
        # share of farthest point sampling inside the forward
        import cast.models.cast as cm

        spent = [0.0]
        original = cm.farthest_point_sample

        def timed(*a, **k):
            t = time.perf_counter()
            r = original(*a, **k)
            spent[0] += time.perf_counter() - t
            return r

        cm.farthest_point_sample = timed
        try:
            n = repeats
            for _ in range(3):
                model(x, sp)
            spent[0] = 0.0
            t = time.perf_counter()
            for _ in range(n):
                model(x, sp)
            total = time.perf_counter() - t
        finally:
            cm.farthest_point_sample = original
    c, v = statistics.median(cast_ms), statistics.median(vit_ms)
    return {
        "superpixels": int(sp.max()) + 1,
        "cast_small_ms": round(c, 2),
        "vit_small_patch16_224_ms": round(v, 2),
        "ratio_cast_over_vit": round(c / v, 3),
        "ratio_per_round": [round(a / b, 3) for a, b in zip(cast_ms, vit_ms)],
        "fps_share_of_forward": round(spent[0] / total, 4),
        "fps_ms_per_forward": round(1000 * spent[0] / n, 2),
    }


def compile_comparison(repeats: int) -> dict:
    """cast_small eager vs ``torch.compile(model)`` at batch 1 and 8 (the number of superpixels
    passed, as ``cast.Predictor`` does), rounds interleaved."""
    import timm

    import cast

    img = photo(224, 224)
    sp1 = torch.from_numpy(cast.superpixels(img))[None]
    n_sp = int(sp1.max()) + 1
    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000).eval()
    compiled = torch.compile(model)
    out: dict = {"superpixels": n_sp}
    with torch.inference_mode():
        for batch in (1, 8):
            x, sp = torch.randn(batch, 3, 224, 224), sp1.expand(batch, -1, -1).contiguous()
            t = time.perf_counter()
            compiled(x, sp, n_sp)
            out[f"b{batch}_first_call_s"] = round(time.perf_counter() - t, 1)
            assert torch.allclose(compiled(x, sp, n_sp), model(x, sp, n_sp), atol=1e-3)
            eager_ms, comp_ms = [], []
            for _ in range(4):
                eager_ms.append(median_ms(lambda x=x, sp=sp: model(x, sp, n_sp), max(3, repeats // (4 * batch))))
                comp_ms.append(median_ms(lambda x=x, sp=sp: compiled(x, sp, n_sp), max(3, repeats // (4 * batch))))
            e, c = statistics.median(eager_ms), statistics.median(comp_ms)
            out[f"b{batch}"] = {"eager_ms": round(e, 1), "compiled_ms": round(c, 1), "speedup": round(e / c, 3),
                                "speedup_per_round": [round(a / b, 3) for a, b in zip(eager_ms, comp_ms)]}
    explained = torch._dynamo.explain(model)(torch.randn(1, 3, 224, 224), sp1, n_sp)
    out["graph_breaks"] = explained.graph_break_count
    return out


def weight_count_m(model: torch.nn.Module) -> float:
    """Millions of stored weights: parameters plus the fixed tensors kept as buffers (sin-cos
    positions, the never-trained last pooling), BatchNorm statistics not counted (as published)."""
    fixed = sum(b.numel() for n, b in model.named_buffers() if b.is_floating_point() and "running_" not in n)
    return round((sum(p.numel() for p in model.parameters()) + fixed) / 1e6, 2)


def model_costs() -> dict:
    import timm

    import cast

    img = photo(224, 224)
    sp = torch.from_numpy(cast.superpixels(img))[None]
    x = torch.randn(1, 3, 224, 224)
    out = {}
    for name in ("cast_tiny", "cast_small"):
        m = timm.create_model(name, num_classes=1000).eval()
        out[name] = {"params_M": weight_count_m(m), "trainable_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                     "gmacs_224": round(gmacs(m, x, sp), 3), "superpixels": int(sp.max()) + 1}
    for name in cast.MODEL_NAMES:  # parameters of every variant (1000-class head), built without memory
        with torch.device("meta"):
            m = timm.create_model(name, num_classes=1000)
        out.setdefault(name, {})["params_M"] = weight_count_m(m)
    for name in ("vit_tiny_patch16_224", "vit_small_patch16_224"):
        m = timm.create_model(name).eval()
        out[name] = {"params_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2), "gmacs_224": round(gmacs(m, x), 3)}
    return out


def superpixel_costs(repeats: int) -> dict:
    import cast

    out = {}
    for size in (224, 1024):
        img = photo(size, size)
        for method in ("seeds", "slic"):
            out[f"{method}_{size}px_ms"] = round(median_ms(lambda i=img, m=method: cast.superpixels(i, m), max(3, repeats // 5)), 1)
    return out


def predictor_cost(repeats: int) -> dict:
    import timm

    import cast

    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000).eval()
    predictor = cast.Predictor(model)
    img = Image.fromarray(photo(1024, 768))
    path = ROOT / "benchmarks" / "results" / "_photo_1024x768.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    stages: dict[str, list[float]] = {}
    totals = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        tree = predictor(path)
        dt = time.perf_counter() - t
        if i >= 2:
            totals.append(dt)
            for k, v in tree.timings.items():
                stages.setdefault(k, []).append(v)
    path.unlink()
    return {"photo": "1024x768 JPEG", "median_s": round(statistics.median(totals), 4),
            "stages_median_s": {k: round(statistics.median(v), 4) for k, v in stages.items()}}


def _big_photo_child(path: str) -> None:
    """Run in a subprocess: one Predictor call on a 24 MP photo, print time and peak RSS."""
    import timm

    import cast

    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000).eval()
    predictor = cast.Predictor(model)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    tree = predictor(path)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": dt, "peak_rss_gib": peak / 2**20, "rss_before_gib": base_rss / 2**20,
                      "size": list(tree.size), "stages_s": tree.timings}))


def big_photo_cost(threads: int) -> dict:
    path = ROOT / "benchmarks" / "results" / "_photo_24mp.jpg"
    Image.fromarray(photo(6000, 4000)).save(path, quality=90)
    try:
        r = subprocess.run([sys.executable, __file__, "--child-big", str(path), "--threads", str(threads)],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        path.unlink(missing_ok=True)
    return {"photo": "6000x4000 JPEG (24 MP)", "seconds": round(res["seconds"], 3),
            "peak_rss_gib": round(res["peak_rss_gib"], 3), "stages_s": {k: round(v, 3) for k, v in res["stages_s"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency.json"))
    parser.add_argument("--only", default=None, help="run one step (forward, costs, superpixels, ...) and update --out in place")
    parser.add_argument("--child-big", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_big:
        _big_photo_child(args.child_big)
        return
    results = {
        "machine": {"cpu_threads": args.threads, "cores": __import__("os").cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    steps = [("forward", lambda: forward_comparison(args.repeats)), ("compile", lambda: compile_comparison(args.repeats)),
             ("costs", model_costs),
             ("superpixels", lambda: superpixel_costs(args.repeats)), ("predictor_1024x768", lambda: predictor_cost(args.repeats)),
             ("predictor_24mp", lambda: big_photo_cost(args.threads))]
    if args.only:
        steps = [(n, f) for n, f in steps if n == args.only]
        if Path(args.out).is_file():
            results = {**json.loads(Path(args.out).read_text()), "machine": results["machine"]}
    for name, fn in steps:
        print(f"[latency] {name} ...", file=sys.stderr, flush=True)
        results[name] = fn()
        print(json.dumps(results[name], indent=1), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
