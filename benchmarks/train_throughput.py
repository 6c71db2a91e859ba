"""Training throughput: cast_tiny vs vit_tiny on PartShapes at the same input size (2 CPU cores).

For each model, two numbers:
- ``pipeline_img_s``: the real training loop (``train.engine.Trainer``) with its data pipeline
  (PartShapes rendering, augmentation and SEEDS superpixels in a DataLoader worker);
- ``compute_img_s``: forward + backward + AdamW step on pre-made batches (no data loading),
  which isolates the model's cost.
Also GMACs per image (forward, ``torch.utils.flop_counter``) and parameters. With a GPU, the
script also measures cast_small at 224 px with AMP (images/s and peak memory).

    python benchmarks/train_throughput.py [--steps 30] [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CONFIGS = {"cast_tiny": "partshapes_cast_tiny.yaml", "vit_tiny": "partshapes_vit_tiny.yaml"}


def _gmacs(model: torch.nn.Module, batch: tuple) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from train.objectives import encode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encode(model, batch[0][:1], batch[1][:1])
    return counter.get_total_flops() / 2e9


def measure(name: str, steps: int, batch_size: int, workers: int) -> dict:
    from train.config import load_config
    from train.engine import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "train" / "configs" / CONFIGS[name], [
            f"run.out_dir={tmp}", f"run.max_steps={steps}", "run.eval=false", "run.log_every=5",
            f"run.batch_size={batch_size}", f"data.num_workers={workers}", "run.threads=2",
        ])
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        records = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["img_s"] for r in records if "img_s" in r and r["step"] > 5]  # skip start-up
        # compute only: the same model, objective and optimizer on one fixed batch
        batch = next(iter(trainer.loader))
        model = trainer.model
        gmacs = _gmacs(model.eval(), batch)
        trainer.objective.train()
        times = []
        for i in range(12):
            t = time.perf_counter()
            out = trainer.objective(batch)
            out["loss"].backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t)
        return {
            "config": CONFIGS[name], "image_size": cfg.data.image_size, "batch_size": batch_size,
            "data_workers": workers, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "gmacs_per_image": round(gmacs, 4),
            "pipeline_img_s": round(statistics.median(rates), 2) if rates else None,
            "pipeline_wall_s": round(wall, 1),
            "compute_img_s": round(batch_size / statistics.median(times), 2),
        }


def gpu_cast_small() -> dict | None:
    if not torch.cuda.is_available():
        return None
    import timm

    import cast  # noqa: F401

    dev = torch.device("cuda")
    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = 64
    x = torch.randn(b, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    r = torch.arange(224, device=dev) // 16
    sp = (r[:, None] * 14 + r[None, :]).expand(b, -1, -1).contiguous()
    y = torch.randint(0, 1000, (b,), device=dev)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(15):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x, sp), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - t)
    return {"device": torch.cuda.get_device_name(), "amp": str(dtype), "batch_size": b,
            "img_s": round(b / statistics.median(times), 1), "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_threads": 2, "torch": torch.__version__}
    for name in CONFIGS:
        print(f"[train_throughput] {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(name, args.steps, args.batch_size, args.workers)
        print(json.dumps(results[name]), file=sys.stderr)
    c, v = results["cast_tiny"], results["vit_tiny"]
    results["cast_over_vit"] = {
        "pipeline_img_s": round(c["pipeline_img_s"] / v["pipeline_img_s"], 3) if c["pipeline_img_s"] and v["pipeline_img_s"] else None,
        "compute_img_s": round(c["compute_img_s"] / v["compute_img_s"], 3),
        "gmacs": round(c["gmacs_per_image"] / v["gmacs_per_image"], 3),
    }
    results["gpu_cast_small_224_amp"] = gpu_cast_small()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["cast_over_vit"]), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
