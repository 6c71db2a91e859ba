"""App fixtures: an Explorer on the bundled model, a launched app on 127.0.0.1, and bad uploads."""

from __future__ import annotations

import io
import shutil
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import AppConfig

ABSENT_MODEL = "cast_base.mocov3_in1k"  # never put in the test Hub cache: stands for "the Hub is unreachable"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A models folder with one own-format CAST (listed) and one ViT folder (not listed)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_dir, root / "my_cast")
    add_concepts(root / "my_cast")
    vit = root / "some_vit"
    vit.mkdir()
    (vit / "config.json").write_text('{"format": "cast-explorer", "architecture": "vit_tiny_patch16_224"}')
    (vit / "model.safetensors").write_bytes(b"")
    return root


def add_concepts(folder: Path, dim: int = 48, counts: tuple[int, ...] = (6, 3, 2)) -> None:
    """Give a model folder a (random) HIRL concept hierarchy with thumbnails, as export writes it."""
    import torch

    from cast.concepts import ConceptHierarchy, save_concepts

    torch.manual_seed(0)
    concepts = ConceptHierarchy(dim, list(counts), hidden=32)
    for lv, m in enumerate(counts):
        getattr(concepts, f"prototypes_{lv}").copy_(torch.nn.functional.normalize(torch.randn(m, dim), dim=1))
        if lv + 1 < len(counts):
            getattr(concepts, f"parents_{lv}").copy_(torch.arange(m) % counts[lv + 1])
    thumbs = {(lv + 1, k): [encoded(Image.new("RGB", (16, 16), (40 * k, 80, 120)), "JPEG")]
              for lv, m in enumerate(counts) for k in range(m)}
    save_concepts(concepts, folder, thumbs)


def app_config(tmp: Path, models_dir: Path, **overrides) -> AppConfig:
    cfg = AppConfig(default_model="bundled", models_dir=models_dir, precompute_examples=False, temp_dir=tmp,
                    max_models=3, threads=0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def explorer(tmp_path_factory, models_dir):
    from app.service import Explorer

    ex = Explorer(app_config(tmp_path_factory.mktemp("explorer"), models_dir))
    yield ex
    ex.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, models_dir):
    """The app launched in this process on 127.0.0.1 (default model unreachable -> bundled fallback)."""
    from app import create_app, launch_kwargs

    cfg = app_config(tmp_path_factory.mktemp("server"), models_dir, default_model=ABSENT_MODEL,
                     precompute_examples=True, max_file_size="5mb")
    demo, explorer = create_app(cfg)
    kwargs = launch_kwargs(cfg)
    kwargs.update(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.launch(**kwargs)
    url = f"http://127.0.0.1:{kwargs['server_port']}/"
    yield url, explorer
    demo.close()
    explorer.close()


# -- bad uploads -------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (1.6 GP by default)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="session")
def uploads(tmp_path_factory, photo) -> dict[str, Path]:
    """Files a person might upload: one good photo, refused ones and odd-but-readable ones."""
    root = tmp_path_factory.mktemp("uploads")
    small = Image.fromarray(photo).resize((192, 192))
    jpeg = encoded(small, "JPEG", quality=90)
    frames = [Image.fromarray(np.full((64, 80, 3), c, np.uint8)) for c in (30, 120, 220)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    deep = (np.asarray(small.convert("L"), np.uint16) * 257).astype(np.uint16)
    files = {
        "good.jpg": jpeg,
        "wide.jpg": encoded(Image.fromarray(photo).resize((1000, 600)), "JPEG", quality=90),  # larger than display
        # refused: each must come back as a clear error
        "notes.txt": b"this is not an image\n" * 20,
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "bomb.png": bomb_png(),
        "tiny.png": encoded(Image.new("RGB", (3, 5), (200, 10, 10)), "PNG"),
        # readable after conversion: segmented, and the conversion is reported
        "cmyk.jpg": encoded(small.convert("CMYK"), "JPEG"),
        "deep16.png": encoded(Image.fromarray(deep), "PNG"),
        "animated.gif": anim.getvalue(),
    }
    paths = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        paths[name] = root / name
    return paths
