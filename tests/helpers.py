"""Helpers shared by tests: tiny models, published-layout files, Hub cache population."""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# the key names and shapes of the published checkpoint files, per family (a test fixture)
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
    """Random tensors with exactly the published keys and shapes (shared blocks share tensors).

    A new dict each call over tensors made once per (layout, seed): replace or drop entries freely,
    never change a tensor in place."""
    return dict(_random_tensors(layout, seed))


@functools.lru_cache(maxsize=4)
def _random_tensors(layout: str, seed: int) -> dict[str, torch.Tensor]:
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


def write_moco_file(path: Path, backbone: dict[str, torch.Tensor], momentum: bool = True) -> Path:
    """A MoCo-v3 training file: base (+ momentum) encoders, projector heads, predictor, optimizer."""
    sd = {}
    for k, v in backbone.items():
        sd["module.base_encoder." + k] = v
        if momentum:
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
        try:
            os.link(src, dst)  # no second copy of large files
        except OSError:
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


# -- images ------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (3.6 GP by default): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` saved in ``fmt`` (PNG, JPEG, ...), as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# -- trees -------------------------------------------------------------------------------------

def check_invariants(tree, width: int, height: int) -> None:
    """Everything a :class:`cast.Hierarchy` promises: compact ids, areas and boxes that match the
    label maps, levels that nest, parents and children that agree."""
    assert tree.size == (width, height)
    assert len(tree.label_maps) == 4 and len(tree.parents) == 3
    for lv, m in enumerate(tree.label_maps, start=1):
        assert m.shape == (height, width) and m.dtype == np.uint8
        nodes = tree.nodes_at(lv)
        assert [n.id for n in nodes] == list(range(len(nodes)))
        assert np.array_equal(np.unique(m), np.arange(len(nodes))), "ids are compact and all used"
        assert sum(n.area for n in nodes) == width * height
        counts = np.bincount(m.ravel(), minlength=len(nodes))
        assert [n.area for n in nodes] == counts.tolist()
        for n in nodes:
            ys, xs = np.nonzero(m == n.id)
            assert n.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    for lv in range(3):
        assert np.array_equal(tree.parents[lv][tree.label_maps[lv]], tree.label_maps[lv + 1])
        for n in tree.nodes_at(lv + 1):
            assert n.parent == tree.parents[lv][n.id]
            assert n.id in tree.node(lv + 2, n.parent).children
    assert all(n.parent is None for n in tree.nodes_at(4))
    assert tree.superpixels.shape == (height, width)
