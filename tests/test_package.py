"""The installable library: the wheel ``pip install`` makes from this checkout, what it holds, and an
installed copy used from outside the checkout (its ``cast`` command, the bundled model inside it)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import cast

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAX_WHEEL_BYTES = 20 * 10**6
OPTIONAL_IMPORTS = {"spaces"}  # the Hugging Face Spaces runtime, imported only where it exists (app/callbacks.py)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements if r.strip()}


EXTRA_MODULES = {"cast/ray_engine.py": "ray"}  # integrations whose imports an extra brings


def _third_party_imports(package: str, extra: str | None = None) -> set[str]:
    """Third-party modules imported by ``package``'s files (those of the integration for ``extra``
    when given; else the others)."""
    names = set()
    for f in (ROOT / package).rglob("*.py"):
        if EXTRA_MODULES.get(f.relative_to(ROOT).as_posix()) != extra:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("cast", "app", "train")} - OPTIONAL_IMPORTS


@pytest.mark.parametrize("package,extras,integration", [("cast", (), None), ("cast", ("ray",), "ray"), ("app", ("app",), None),
                                                     ("train", ("train",), None)])
def test_every_import_is_a_declared_dependency(package, extras, integration):
    """What ``pip install .`` (and its extras) brings is enough for the code to import."""
    declared = _requirement_names(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        declared |= _requirement_names(PYPROJECT["project"]["optional-dependencies"][extra])
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports(package, integration)
    assert imports, "no imports found"
    for name in sorted(imports):
        dists = {d.lower().replace("_", "-") for d in providers.get(name, [])}
        assert dists & declared or name in ("torchvision",) and "timm" in declared, \
            f"{package}/ imports {name} (from {sorted(dists)}), which pyproject.toml does not declare for it"


def test_pyproject_declares_the_library_its_extras_and_the_command():
    project = PYPROJECT["project"]
    assert project["scripts"] == {"cast": "cast.__main__:main"}
    assert set(project["optional-dependencies"]) >= {"app", "train", "test", "ray"}
    assert "ray" not in _requirement_names((ROOT / "requirements.txt").read_text().splitlines())  # not on the Space
    assert project["dynamic"] == ["version"] and PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cast.__version__"}
    # the Space installs requirements.txt: everything the library and the app need is in it
    space = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    needed = _requirement_names(project["dependencies"] + project["optional-dependencies"]["app"])
    assert needed <= space, f"missing from requirements.txt: {needed - space}"
    assert "opencv-python" not in space and "opencv-python-headless" not in space  # SEEDS needs the contrib build


def _source_tree(dest: Path) -> Path:
    """What a clean clone holds: the files git tracks (and new ones it does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    src = _source_tree(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = dist.glob("cast_explorer-*.whl")
    return built


def test_the_wheel_holds_the_library_and_its_default_model_only(wheel):
    assert wheel.name == f"cast_explorer-{cast.__version__}-py3-none-any.whl"
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"{wheel.stat().st_size / 1e6:.1f} MB"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    top = {n.split("/")[0] for n in names}
    assert top == {"cast", f"cast_explorer-{cast.__version__}.dist-info"}, "no app, train, tests or benchmarks"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo")) or "/." in n]
    bundled = {n.removeprefix("cast/assets/bundled/") for n in names if n.startswith("cast/assets/bundled/")}
    assert {"config.json", "model.safetensors.index.json"} <= bundled
    index = json.loads((ROOT / "cast" / "assets" / "bundled" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) <= bundled, "every shard of the bundled weights"
    assert {"cast/models/cast.py", "cast/models/features.py", "cast/__main__.py"} <= set(names)
    assert "cast = cast.__main__:main" in entry_points
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert any(r.startswith("timm") for r in requires) and any("extra == \"app\"" in r for r in requires)


@pytest.mark.slow  # a virtual environment, pip and a segmentation in subprocesses
def test_an_installed_wheel_segments_a_photo_outside_the_checkout(wheel, tmp_path, photo):
    from PIL import Image

    venv = tmp_path / "venv"
    # a new environment that sees this machine's packages (torch and the rest are several GB to copy);
    # `--no-index` below makes pip resolve every dependency the wheel declares from what is installed
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.fromarray(photo[:300, :400]).save(work / "photo.jpg")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAST_BUNDLED_DIR")}
    env["HF_HUB_OFFLINE"] = "1"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = run(str(python), "-c",
                "import cast, importlib.metadata as m; print(cast.__file__, cast.__version__, m.version('cast-explorer'))")
    path, version, dist_version = where.stdout.split()
    assert Path(path).is_relative_to(venv) and version == dist_version == cast.__version__
    seg = run(str(venv / "bin" / "cast"), "segment", "photo.jpg", "--out", "out", "--format", "json,coco", "--quiet")
    assert seg.returncode == 0, seg.stderr
    tree = json.loads((work / "out" / "photo" / "hierarchy.json").read_text())
    assert tree["model"]["source"] == "bundled" and (tree["image"]["width"], tree["image"]["height"]) == (400, 300)
    assert json.loads((work / "out" / "coco.json").read_text())["annotations"]
    # the console script is `python -m cast`
    helps = [run(str(venv / "bin" / "cast"), "--help").stdout, run(str(python), "-m", "cast", "--help").stdout]
    words = [" ".join(h.replace("usage: cast", "usage: python -m cast").split()) for h in helps]  # wrapped alike or not
    assert helps[0].startswith("usage: cast") and words[0] == words[1]
    listing = run(str(venv / "bin" / "cast"), "models").stdout
    assert re.search(r"^bundled .*site-packages.*\(installed\)", listing, re.M)
    missing = run(str(python), "-c", "import cast; cast.load_model('bundled_vit')")
    assert missing.returncode != 0 and "not with the pip package" in missing.stderr and "CAST_BUNDLED_VIT_DIR" in missing.stderr


@pytest.mark.slow  # writes two full-size published-layout files
def test_the_readme_timm_example_runs_as_written(hub_cache, tmp_path):
    """README's *With timm* code, run as it is (the published files replaced by random weights in the
    published layout, in the offline Hub cache)."""
    import timm
    from PIL import Image

    from cast.weights import PUBLISHED
    from tests.helpers import populate_hub_cache, write_deit_file, write_moco_file

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## With timm"):]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    files = {}
    for name in ("cast_small.deit_in1k", "cast_base.mocov3_in1k"):
        w = PUBLISHED[name]
        sd = timm.create_model(name).state_dict()
        path = tmp_path / name
        files[w.hub_file] = write_deit_file(path, sd) if w.family == "deit" else write_moco_file(path, sd, momentum=False)
    ref = hub_cache / "models--twke--CAST" / "refs" / "main"
    previous = ref.read_text() if ref.exists() else None  # the cache is shared with other tests
    populate_hub_cache(hub_cache, "twke/CAST", files, commit="c" * 40)
    Image.open(ROOT / "assets" / "examples" / "chelsea.jpg").save(tmp_path / "photo.jpg")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        scope: dict = {}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
        if previous is not None:
            ref.write_text(previous)
    assert scope["logits"].shape == (1, 1000)
    assert [t.shape[1] for t in scope["tokens"][1:]] == [64, 32, 16] and scope["tokens"][0].shape[1] <= 196
    assert [a.shape for a in scope["assignments"]] == [(1, scope["tokens"][0].shape[1])] * 4
    assert [tuple(m.shape) for m in scope["maps"]] == [(1, 768, 28, 28)] * 4
    assert scope["tree"].label_maps[0].shape == (300, 451)
