"""``cast segment --engine ray`` on a local Ray instance: the same files as the local engine, a
killed model worker retried, an interrupted run resumed, a mismatched output refused, inputs read
through pyarrow's filesystems, and a clear message without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import _processes_with

pytestmark = pytest.mark.slow  # subprocess runs of the CLI, a Ray instance each

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--format", "json,coco,labelstudio", "--batch-size", "2", "--workers", "0", "--writers", "0", "--quiet"]


def cli(*args, wait: bool = True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    cmd = [sys.executable, "-m", "cast", "segment", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def files_of(out: Path) -> dict[str, bytes]:
    """Every file an output folder holds (its manifest and part files included), by relative path;
    a tree's ``timings`` (seconds measured while it was made) left out, and a status file's input
    name reduced to the file name (given as a URI or as a path)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name in ("hierarchy.json", "report.json") or p.name.endswith(".status.json"):
            doc = json.loads(data)
            doc.pop("timings", None)
            for entry in [doc, *doc.get("failed", [])]:
                if "file" in entry:
                    entry["file"] = entry["file"].rsplit("/", 1)[-1]
            data = json.dumps(doc, sort_keys=True).encode()
        files[p.relative_to(out).as_posix()] = data
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    src = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(3)
    for i in range(7):
        y, x = rng.integers(0, 200, 2)
        Image.fromarray(photo[y:y + 200, x:x + 260]).save(src / f"img{i:02d}.jpg", quality=90)
    (src / "img99_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return src


@pytest.fixture(scope="module")
def local_out(folder, tiny_model_dir, tmp_path_factory):
    """The local engine's output: what the Ray engine must equal."""
    out = tmp_path_factory.mktemp("local") / "out"
    r = cli(folder, "--model", tiny_model_dir, "--out", out, *COMMON)
    assert r.returncode == 1 and "img99_broken.jpg" in r.stderr, r.stderr
    return out


def test_ray_writes_what_the_local_engine_writes_through_file_uris(folder, local_out, tiny_model_dir, tmp_path):
    out = tmp_path / "ray"  # inputs and output given as URIs: read and written through pyarrow's filesystems
    r = cli(f"file://{folder}", "--model", tiny_model_dir, "--out", f"file://{out}", *COMMON, "--engine", "ray")
    assert r.returncode == 1, r.stderr  # the broken file: the local engine's exit code
    assert "failed: " in r.stderr and "img99_broken.jpg" in r.stderr.splitlines()[-1]
    assert "7 segmented now, 7 of 8 inputs" in r.stderr
    ours, theirs = files_of(out), files_of(local_out)
    assert sorted(ours) == sorted(theirs) and len(ours) > 8 * 2
    differ = [name for name in ours if ours[name] != theirs[name]]
    assert not differ, f"files that differ from the local engine's: {differ[:5]}"
    report = json.loads((out / "report.json").read_text())  # the failures, by name, in one file
    assert (report["inputs"], report["done"]) == (8, 7) and [f["file"] for f in report["failed"]] == [f"file://{folder}/img99_broken.jpg"]
    broken = json.loads((out / ".parts" / "00000007.status.json").read_text())
    assert broken["file"] == f"file://{folder}/img99_broken.jpg" and broken["error"].startswith("img99_broken.jpg: ")
    again = cli(f"file://{folder}", "--model", tiny_model_dir, "--out", f"file://{out}", *COMMON, "--engine", "ray")
    assert "0 segmented now, 7 of 8 inputs" in again.stderr  # a finished job: nothing redone


def _workers(proc: subprocess.Popen, title: str) -> set[int]:
    """Live processes started by ``proc`` (its Ray instance's workers) whose title starts with
    ``title`` (Ray names them, e.g. ``ray::Map(_write)``)."""
    parent, titles = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z":
                parent[int(d.name)] = int(stat[1])
                titles[int(d.name)] = (d / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    family, todo = set(), [proc.pid]
    while todo:
        current = todo.pop()
        kids = [c for c, pp in parent.items() if pp == current and c not in family]
        family.update(kids)
        todo += kids
    return {pid for pid in family if titles.get(pid, "").startswith(title)}


def _wait_for(condition, timeout: float = 180.0, what: str = "", poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def test_a_killed_model_worker_and_a_killed_task_are_retried_and_the_output_is_complete(folder, local_out, tiny_model_dir,
                                                                                          tmp_path):
    out = tmp_path / "ray"
    parts = out / ".parts"
    proc = cli(folder, "--model", tiny_model_dir, "--out", out, *COMMON, "--engine", "ray", "--batch-size", "2", wait=False)
    try:
        # the model actor's process, SIGKILLed as soon as it is up
        actor = "ray::MapWorker(MapBatches(_Forward))"
        _wait_for(lambda: _workers(proc, actor), what="the model actor")
        killed = _workers(proc, actor)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: _workers(proc, actor) - killed or proc.poll() is not None, what="a restart")
        assert _workers(proc, actor) - killed, "Ray did not restart the killed model actor"
        # then a worker process running a writing task, SIGKILLed too
        # a writing task lasts a fraction of a second: look often, or the run may end between two looks
        _wait_for(lambda: _workers(proc, "ray::Map(_write)") or proc.poll() is not None, what="a writing task", poll=0)
        writers = _workers(proc, "ray::Map(_write)")
        for pid in writers:
            os.kill(pid, signal.SIGKILL)
        assert writers, "the run ended before a writing task could be killed"
        assert proc.wait(timeout=600) == 1, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(list(parts.glob("*.status.json"))) == 8
    assert (out / "coco.json").read_bytes() == (local_out / "coco.json").read_bytes()
    assert (out / "labelstudio.json").read_bytes() == (local_out / "labelstudio.json").read_bytes()


def test_an_interrupted_run_resumes_and_an_output_of_other_inputs_is_refused(folder, local_out, tiny_model_dir, tmp_path):
    out = tmp_path / "ray"
    # the reference, meanwhile: batch size 1, every image alone, so the files equal the local engine's run at batch size 1
    ref = tmp_path / "local1"
    reference = cli(folder, "--model", tiny_model_dir, "--out", ref, *COMMON, "--batch-size", "1", wait=False)
    proc = cli(folder, "--model", tiny_model_dir, "--out", out, *COMMON, "--engine", "ray", "--batch-size", "1", wait=False)
    parts = out / ".parts"
    try:
        _wait_for(lambda: parts.is_dir() and len(list(parts.glob("*.status.json"))) >= 2, what="two images written")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        proc.wait()
    _wait_for(lambda: not _processes_with(str(out)), timeout=60, what="the killed run's processes to go")
    before = len(list(parts.glob("*.status.json")))
    assert 0 < before < 8
    r = cli(folder, "--model", tiny_model_dir, "--out", out, *COMMON, "--engine", "ray", "--batch-size", "1")
    assert r.returncode == 1, r.stderr
    now = int(r.stderr.strip().splitlines()[-2].split()[0])
    assert now <= 8 - before  # only what was left
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 1, err  # 1: the broken file
    assert (out / "coco.json").read_bytes() == (ref / "coco.json").read_bytes()
    # another input list into the same output: refused before Ray starts
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for f in sorted(folder.glob("img0*.jpg"))[:3]:
        (fewer / f.name).write_bytes(f.read_bytes())
    r = cli(fewer, "--model", tiny_model_dir, "--out", out, *COMMON, "--engine", "ray")
    assert r.returncode == 2 and "another input list" in r.stderr, r.stderr


def test_without_ray_the_engine_says_how_to_install_it(folder, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from cast.__main__ import main; "
            f"sys.exit(main(['segment', {str(folder)!r}, '--out', {str(tmp_path / 'o')!r}, '--engine', 'ray']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == 'error: the Ray engine needs Ray: pip install "cast-explorer[ray]" (or pip install "ray[data]")'
