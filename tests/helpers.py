"""Helpers shared by tests: tiny models, published-layout files, Hub cache population."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch

# a copy of shared/spec/official_state_dict_keys.json: the published key layouts
SPEC = Path(__file__).resolve().parent / "data" / "official_state_dict_keys.json"

TINY_ARGS = dict(img_size=64, embed_dim=48, depths=(1, 1, 1, 1), num_heads=2, num_clusters=(16, 8, 4, 2), num_classes=5)
TINY_CLASSES = ["circle", "square", "triangle", "star", "ring"]


def make_tiny_model(seed: int = 0, **overrides):
    """cast_tiny shrunk for tests: 64 px input, 16/8/4/2 clusters, 48 wide, 5 classes."""
    import timm

    import cast  # noqa: F401  (registers the models)
    from cast.superpixels import SuperpixelSettings
    from cast.weights import ModelInfo

    torch.manual_seed(seed)
    model = timm.create_model("cast_tiny", **{**TINY_ARGS, **overrides}).eval()
    model.info = ModelInfo(
        name="cast_tiny", family="cast-explorer", input_size=model.img_size,
        superpixels=SuperpixelSettings("seeds", 40, {"histogram_bins": 5, "num_iterations": 4}),
        class_names=TINY_CLASSES[: model.num_classes] if model.num_classes else None, source="test",
    )
    return model


def official_keys(layout: str) -> list[tuple[str, list[int]]]:
    return [(k, s) for k, s in json.loads(SPEC.read_text())[layout]]


def random_state_dict(layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the published keys and shapes (shared blocks share tensors)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in official_keys(layout):
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.02
    # blocks{l}.{i} are the same tensors as blocks.{i} in the published files
    for key in list(sd):
        if key.startswith("blocks") and not key.startswith("blocks."):
            sd[key] = sd["blocks." + key.split(".", 1)[1]]
    return sd


def write_moco_file(path: Path, backbone: dict[str, torch.Tensor]) -> Path:
    """A MoCo-v3 training file: base + momentum encoders, projector heads, predictor, optimizer."""
    sd = {}
    for k, v in backbone.items():
        sd["module.base_encoder." + k] = v
        sd["module.momentum_encoder." + k] = v.clone()
    for prefix in ("module.base_encoder.head", "module.momentum_encoder.head"):
        sd[prefix + ".0.weight"] = torch.randn(16, 384)
        sd[prefix + ".1.running_mean"] = torch.zeros(16)
    sd["module.predictor.0.weight"] = torch.randn(8, 16)
    torch.save({"epoch": 100, "arch": "cast_small", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
                "scaler": {"scale": 65536.0}}, path)
    return path


def write_deit_file(path: Path, model_sd: dict[str, torch.Tensor]) -> Path:
    """A DeiT training file, with its argparse.Namespace of arguments."""
    args = argparse.Namespace(model="cast_small", lr=5e-4, batch_size=128, epochs=300)
    torch.save({"model": model_sd, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"last_epoch": 299},
                "epoch": 299, "model_ema": None, "scaler": {"scale": 1024.0}, "args": args}, path)
    return path


def populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str | None = None) -> str:
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<path>."""
    commit = commit or hashlib.sha1(repo_id.encode() + b"".join(f.encode() for f in sorted(files))).hexdigest()
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, src in files.items():
        dst = root / "snapshots" / commit / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return commit


def fps_reference(points: list[list[list[float]]], k: int) -> list[list[int]]:
    """Brute-force farthest point sampling in plain Python floats (the published sampler's loop).

    One batch element at a time, distances summed channel by channel, strict ``>`` so that ties
    go to the lowest index. ``points`` is ``B`` lists of ``N`` points of ``C`` floats.
    """
    result = []
    for cloud in points:
        n = len(cloud)
        chosen = [0]
        dist = [0.0] * n
        current = 0
        for i in range(1, k):
            best, best_idx = 0.0, 0
            for j in range(n):
                d = 0.0
                for a, b in zip(cloud[j], cloud[current]):
                    d += (a - b) * (a - b)
                if i == 1 or d < dist[j]:
                    dist[j] = d
                if dist[j] > best:
                    best, best_idx = dist[j], j
            current = best_idx
            chosen.append(current)
        result.append(chosen)
    return result
