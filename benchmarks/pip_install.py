"""``pip install`` of the wheel into a truly fresh environment, then ``cast segment`` on one photo.

The test suite (``tests/test_package.py``) installs the wheel into an environment that sees this
machine's packages, to stay fast. This check is the full one: a new virtual environment with nothing
in it, every dependency the wheel declares resolved and installed by pip from the package index (the
only network it uses), then, from a folder outside the checkout and with ``HF_HUB_OFFLINE=1``,
``cast segment`` on a photo with the bundled model that ships inside the wheel.

Usage::

    python benchmarks/pip_install.py [--out benchmarks/results/pip_install.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pip_install.json"))
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cast-pip-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version()}
    try:
        dist = work / "dist"
        t = time.perf_counter()
        src = work / "src"  # what git tracks, so the checkout gets no build/ or egg-info
        shutil.rmtree(src, ignore_errors=True)
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
        for name in filter(None, (n.decode() for n in listed)):
            if (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                       check=True, capture_output=True)
        (wheel,) = dist.glob("*.whl")
        result.update(wheel=wheel.name, wheel_mb=round(wheel.stat().st_size / 1e6, 2), build_s=round(time.perf_counter() - t, 1))

        venv = work / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no system site packages
        python = venv / "bin" / "python"
        t = time.perf_counter()
        subprocess.run([str(python), "-m", "pip", "install", "--upgrade", "pip"], capture_output=True, text=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", str(wheel)], capture_output=True, text=True)
        result.update(install_ok=pip.returncode == 0, install_s=round(time.perf_counter() - t, 1))
        if pip.returncode != 0:
            result["install_error"] = pip.stderr[-2000:]
            raise SystemExit(1)
        result["venv_gb"] = round(_size(venv) / 1e9, 2)
        listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                                           text=True).stdout)
        wanted = ("torch", "timm", "opencv-contrib-python-headless", "huggingface-hub", "cast-explorer")
        result["installed"] = sorted(f"{p['name']}=={p['version']}" for p in listed
                                     if p["name"].lower().replace("_", "-") in wanted)
        result["packages_installed"] = len(listed)

        elsewhere = work / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        shutil.copy(ROOT / "assets" / "examples" / "chelsea.jpg", elsewhere / "chelsea.jpg")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CAST_"))}
        env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(work / "empty-hub-cache"))
        t = time.perf_counter()
        seg = subprocess.run([str(venv / "bin" / "cast"), "segment", "chelsea.jpg", "--out", "out", "--format", "json,coco",
                              "--quiet"], cwd=elsewhere, env=env, capture_output=True, text=True)
        tree = elsewhere / "out" / "chelsea" / "hierarchy.json"
        result.update(segment_ok=seg.returncode == 0 and tree.is_file(), segment_s=round(time.perf_counter() - t, 1),
                      segment_stderr=seg.stderr.strip().splitlines()[-1:] if seg.stderr.strip() else [])
        if tree.is_file():
            data = json.loads(tree.read_text())
            result["model_source"] = data["model"]["source"]
            result["segments_per_level"] = [sum(1 for n in data["nodes"] if n["level"] == lv) for lv in range(1, 5)]
    finally:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if result.get("segment_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
