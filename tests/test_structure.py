"""The layout rules of the code base, checked on the source itself (imports counted wherever they
are written, inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cast", "app", "train")
MAX_FUNCTION_LINES = 80


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names), from any line of the file."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import x` may name a module
    return found


def _internal_graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for imp in _imports(name, path):
            # the deepest module of ours that the import names
            parts = imp.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in mods and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None and (c := visit(n)):
            return c
    return None


def test_the_model_library_imports_form_a_dag():
    graph = {k: {d for d in v if d != "cast"} for k, v in _internal_graph("cast").items() if k != "cast"}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_import_no_loading_or_inference_code():
    graph = _internal_graph("cast")
    allowed = {"cast.errors", "cast.ops", "cast.superpixels", "cast.taxonomy", "cast.weights"}
    for name, deps in graph.items():
        if name.startswith("cast.models"):
            outside = {d for d in deps if not d.startswith("cast.models")} - allowed
            assert not outside, f"{name} imports {sorted(outside)}"


def test_clustering_is_shared_not_taken_from_the_baseline():
    assert "cast.clustering" in _internal_graph("cast")["cast.baselines"]
    hirl = _imports("train.hirl", ROOT / "train" / "hirl.py")
    assert "cast.clustering" in hirl and not any(i.startswith("cast.baselines") for i in hirl)


def test_imports_flow_one_way():
    """``cast`` never imports the app, training code, Gradio or logging frameworks; ``train`` never the app."""
    for name, path in _modules("cast").items():
        bad = {i for i in _imports(name, path) if i.split(".")[0] in ("app", "train", "gradio", "tensorboard")}
        assert not bad, f"{name} imports {sorted(bad)}"
    for name, path in _modules("train").items():
        bad = {i for i in _imports(name, path) if i.split(".")[0] in ("app", "gradio")}
        assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_80_lines(package):
    long = []
    for name, path in _modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long


def test_ui_module_holds_layout_and_wiring_only():
    tree = ast.parse((ROOT / "app" / "ui.py").read_text())
    nested = [n.name for f in tree.body if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, ast.FunctionDef) and n is not f and f.name != "photo_input"]
    assert not nested, f"callbacks defined inside app/ui.py functions: {nested}"


def test_integrations_are_modules_the_core_never_imports():
    """``cast.labelstudio`` and ``cast.ray_engine`` build on the library; only the command line
    reaches them (inside the command that needs them), so ``import cast`` never loads a server or Ray."""
    graph = _internal_graph("cast")
    for name, deps in graph.items():
        for integration in ("cast.labelstudio", "cast.ray_engine"):
            if not name.startswith(integration) and name != "cast.__main__":
                assert not any(d.startswith(integration) for d in deps), f"{name} imports {integration}"
    main = ast.parse((ROOT / "cast" / "__main__.py").read_text())
    top = {n.module for n in main.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not any("labelstudio" in m or "ray" in m for m in top), "cast.__main__ imports integrations only inside its commands"
    ray_engine = ast.parse((ROOT / "cast" / "ray_engine.py").read_text())
    top = {a.name for n in ray_engine.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in ray_engine.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not {"ray", "pyarrow"} & {m.split(".")[0] for m in top}, "Ray is imported inside the functions that need it"
