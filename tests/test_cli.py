"""``python -m cast segment`` as a user runs it: a real subprocess, offline."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def run_cli_pair(first: list, second: list) -> list[subprocess.CompletedProcess]:
    """Two independent CLI runs side by side (one per core: most of a short run is start-up)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli(*args), (first, second)))


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
    report = json.loads((out / "report.json").read_text())  # the failures with their errors, in one file
    assert report["inputs"] == 5 and report["done"] == 3
    errors = {Path(f["file"]).name: f["error"] for f in report["failed"]}
    assert set(errors) == {"broken.jpg", "bomb.png"} and "too large" in errors["bomb.png"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["astronaut", "astronaut_1", "crop", "report.json"]
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
    from cast.weights import PUBLISHED

    r = run_cli("models")
    assert r.returncode == 0 and "bundled" in r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert set(PUBLISHED) <= set(rows) and len(PUBLISHED) == 10  # every file of the Hub repo
    assert "0.55 GB download" in rows["cast_small_deep.deit_in1k"] and "80.4 % top-1" in rows["cast_small.deit_in1k"]
    assert all("GB download" in rows[name] for name in PUBLISHED)


def _dataset(folder, photo, n=10, broken=True):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        y, x = rng.integers(0, 200, 2)
        Image.fromarray(photo[y:y + 256, x:x + 300]).save(folder / f"img{i:02d}.jpg", quality=90)
    if broken:
        (folder / "img99_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def test_dataset_formats_with_a_broken_file(tmp_path, photo, tiny_model_dir):
    from pycocotools import mask as mask_utils

    from cast.exports import ls_rle_decode, validate_labelstudio

    src = _dataset(tmp_path / "in", photo, n=4)
    out = tmp_path / "out"
    r = run_cli("segment", src, "--model", tiny_model_dir, "--out", out, "--format", "json,coco,labelstudio",
                "--batch-size", "3", "--workers", "2", "--quiet")
    assert r.returncode == 1 and "img99_broken.jpg" in r.stderr and "Traceback" not in r.stderr
    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"img{i:02d}.jpg" for i in range(4)]
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    level4 = np.asarray(Image.open(out / "img00" / "level4.png"))  # the json folder of the same run
    for a in (a for a in first if a["level"] == 4):
        seg = a["segmentation"]
        m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
        assert np.array_equal(m, level4 == int(a["node"].split("-")[1]))
    tasks = json.loads((out / "labelstudio.json").read_text())
    config = (out / "labelstudio.xml").read_text()
    assert len(tasks) == 4 and validate_labelstudio(tasks, config) == []
    region = next(x for x in tasks[0]["predictions"][0]["result"] if x["type"] == "brushlabels" and x["id"] == "L4-0")
    assert np.array_equal(ls_rle_decode(region["value"]["rle"], (256, 300)), level4 == 0)
    r = run_cli("segment", src, "--model", tiny_model_dir, "--out", out, "--format", "xml", "--quiet")
    assert r.returncode == 2 and "--format" in r.stderr


def test_shards_merged_equal_one_run(tmp_path, photo, tiny_model_dir):
    src = _dataset(tmp_path / "in", photo, n=7, broken=False)
    common = ["--model", tiny_model_dir, "--format", "coco,labelstudio", "--batch-size", "2", "--workers", "0", "--quiet"]
    runs = [["segment", src, "--out", tmp_path / "one", *common]]
    runs += [["segment", src, "--out", tmp_path / f"s{i}", "--shard", f"{i}/3", *common] for i in range(3)]
    for r in run_cli_pair(*runs[:2]) + run_cli_pair(*runs[2:]):
        assert r.returncode == 0, r.stderr
    part = json.loads((tmp_path / "s1" / "coco.json").read_text())
    assert 0 < len(part["images"]) < 7  # a shard covers its own images only
    r = run_cli("merge", *(tmp_path / f"s{i}" for i in range(3)), "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    for name in ("coco.json", "labelstudio.json", "labelstudio.xml"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert run_cli("segment", src, "--out", tmp_path / "x", "--shard", "3/3", *common).returncode == 2
    r = run_cli("merge", tmp_path / "s0", tmp_path / "s2", "--out", tmp_path / "partial")  # a shard forgotten
    assert r.returncode == 0 and "of the 7 inputs are in none of these outputs" in r.stderr


def test_an_output_folder_of_other_inputs_or_another_model_is_refused(tmp_path, photo, tiny_model_dir):
    """Parts are numbered by input position: resuming or merging across input lists would give
    images each other's annotations, so it is refused with a clear message."""
    src = _dataset(tmp_path / "in", photo, n=3, broken=False)
    common = ["--format", "coco", "--workers", "0", "--writers", "0", "--quiet"]
    out = tmp_path / "out"
    assert run_cli("segment", src, "--model", tiny_model_dir, "--out", out, *common).returncode == 0
    before = (out / "coco.json").read_text()
    (src / "aaa_new.jpg").write_bytes(next(src.glob("*.jpg")).read_bytes())  # a new photo, first in file order
    r = run_cli("segment", src, "--model", tiny_model_dir, "--out", out, *common)
    assert r.returncode == 2 and "another input list (1 inputs added (e.g. aaa_new))" in r.stderr
    assert "use a new --out folder" in r.stderr and "Traceback" not in r.stderr
    assert (out / "coco.json").read_text() == before  # nothing was touched
    r = run_cli("segment", src, "--model", "bundled", "--out", tmp_path / "other", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("merge", out, tmp_path / "other", "--out", tmp_path / "merged")
    assert r.returncode == 2 and "shards merge only when they were run on the same inputs" in r.stderr
    (src / "aaa_new.jpg").unlink()
    r = run_cli("segment", src, "--model", "bundled", "--out", out, *common)  # the same inputs, another model
    assert r.returncode == 2 and "another model" in r.stderr


def _processes_with(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and text in (p / "cmdline").read_bytes().decode(errors="replace"):
                if (p / "stat").read_text().split(")")[-1].split()[0] != "Z":  # zombies are gone already
                    found.append(int(p.name))
        except OSError:
            continue
    return found


def test_a_killed_run_resumes_where_it_stopped(tmp_path, photo, tiny_model_dir):
    import signal
    import time

    src = _dataset(tmp_path / "in", photo, n=24, broken=False)
    common = ["--model", tiny_model_dir, "--format", "json,coco", "--batch-size", "2", "--workers", "0", "--writers", "2"]
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cast", "segment", str(src), "--out", str(out), *map(str, common)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / ".parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("*.status.json")) if parts.is_dir() else []) < 6:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the writer processes notice and go too
    while time.monotonic() < deadline and _processes_with(str(out)):
        time.sleep(0.2)
    assert not _processes_with(str(out)), "a killed run left processes behind"
    done_before = len(list(parts.glob("*.status.json")))
    assert 0 < done_before < 24, "the run must be killed part way"
    r = run_cli("segment", src, "--out", out, *common)
    assert r.returncode == 0, r.stderr
    now = int(r.stderr.strip().splitlines()[-1].split()[0])
    # only what was left; a batch cut short is redone whole (up to 2 x writers images were in flight)
    assert now <= 24 - done_before + 5 and now < 24
    assert run_cli("segment", src, "--out", tmp_path / "clean", *common, "--quiet").returncode == 0
    assert (out / "coco.json").read_text() == (tmp_path / "clean" / "coco.json").read_text()
