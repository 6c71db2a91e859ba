"""App fixtures: an Explorer on the bundled model, a launched app on 127.0.0.1, and bad uploads."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app.helpers import ABSENT_MODEL, add_concepts, app_config, free_port
from tests.helpers import bomb_png, encoded


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_download_dirs():
    """gradio_client downloads each file through an empty folder it leaves behind in the system temp
    directory (``<tempdir>/<40 hex digits>``): remove the ones the app tests made."""
    tmp = Path(tempfile.gettempdir())

    def leaked() -> set[Path]:
        return {p for p in tmp.iterdir() if re.fullmatch(r"[0-9a-f]{40}", p.name) and p.is_dir()}

    before = leaked()
    yield
    for p in leaked() - before:
        try:
            p.rmdir()  # only if empty: never anything with content
        except OSError:
            pass


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


@pytest.fixture(scope="session")
def explorer(tmp_path_factory, models_dir):
    from app.service import Explorer

    ex = Explorer(app_config(tmp_path_factory.mktemp("explorer"), models_dir))
    yield ex
    ex.close()


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
