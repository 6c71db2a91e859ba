"""``python -m cast segment`` as a user runs it: a real subprocess, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import bomb_png

pytestmark = pytest.mark.slow  # subprocess runs of the CLI

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cast", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_folder_with_broken_files(tmp_path, photo, tiny_model_dir):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo).save(src / "astronaut.jpg")
    Image.fromarray(photo[:100, :150]).save(src / "crop.png")
    Image.fromarray(photo[:50, :50]).save(src / "sub" / "astronaut.png")  # same stem, other folder
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "bomb.png").write_bytes(bomb_png())
    out = tmp_path / "out"
    r = run_cli("segment", src, "--recursive", "--model", tiny_model_dir, "--out", out, "--segment-predictions", "4")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "broken.jpg" in r.stderr and "bomb.png" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "astronaut_1", "crop"]
    tree = json.loads((out / "crop" / "hierarchy.json").read_text())
    assert tree["image"]["width"] == 150 and tree["image"]["height"] == 100
    assert set(tree["segment_predictions"]) == {n["key"] for n in tree["nodes"] if n["level"] == 4}
    assert np.asarray(Image.open(out / "astronaut" / "level1.png")).shape == (512, 512)


def test_all_good_exit_zero_and_missing_input(tmp_path, photo, tiny_model_dir):
    img = tmp_path / "a.png"
    Image.fromarray(photo[:64, :64]).save(img)
    r = run_cli("segment", img, "--model", tiny_model_dir, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "a" / "level4.png").is_file()
    r = run_cli("segment", img, tmp_path / "nope.jpg", "--model", tiny_model_dir, "--out", tmp_path / "o2", "--quiet")
    assert r.returncode == 1 and "nope.jpg" in r.stderr and (tmp_path / "o2" / "a").is_dir()


def test_unloadable_model_is_exit_2_without_traceback(tmp_path, photo):
    img = tmp_path / "a.png"
    Image.fromarray(photo[:64, :64]).save(img)
    r = run_cli("segment", img, "--model", "cast_base.mocov3_in1k", "--out", tmp_path / "o",
                env_extra={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not in the local Hub cache" in r.stderr


def test_models_listing():
    r = run_cli("models")
    assert r.returncode == 0 and "cast_small.deit_in1k" in r.stdout and "bundled" in r.stdout
