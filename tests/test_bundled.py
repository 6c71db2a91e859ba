"""The bundled models: the default one (an H-CAST cast_tiny, package data in cast/assets/bundled) and the
app's three in assets/ (the flat cast_tiny, its ViT baseline, cast_tiny with HIRL concepts); small, loadable
offline, and they segment photos."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

import cast
from cast.weights import PACKAGE_DIR, REPO_ROOT

BUNDLED = PACKAGE_DIR / "assets" / "bundled"


def test_bundled_files_and_size():
    assert (BUNDLED / "config.json").is_file() and (BUNDLED / "model.safetensors.index.json").is_file()
    shards = sorted(BUNDLED.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and sum(f.stat().st_size for f in shards) <= 15 * 2**20
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config["architecture"] == "hcast_tiny" and len(config["info"]["class_names"]) == 10


def test_bundled_model_answers_each_taxonomy_level(monkeypatch):
    """The default: H-CAST cast_tiny, class head on the 32-segment stage, group head on the 16-segment one."""
    monkeypatch.delenv("CAST_BUNDLED_DIR", raising=False)
    predictor = cast.Predictor("bundled")
    assert predictor.info.source == "bundled" and predictor.info.name == "hcast_tiny"
    assert isinstance(predictor.model, cast.HCAST) and predictor.model.level_classes == [10, 3]
    assert predictor.info.taxonomy.level_names == ("class", "group") and predictor.info.class_names[0] == "car"
    example = sorted(Path(REPO_ROOT / "assets" / "examples").glob("partshapes_house_*.png"))[0]
    tree = predictor(example)
    assert tree.size == (160, 160) and tree.num_segments[3] >= 2
    assert [(lv.name, lv.tree_level) for lv in tree.taxonomy.levels] == [("class", 2), ("group", 3)]
    assert tree.taxonomy.argmax_path == ["house", "home and figures"] and tree.taxonomy.heads_agree
    assert tree.taxonomy.consistent_path == ["house", "home and figures"]
    assert all(n.taxonomy_predictions for n in tree.nodes if n.level in (2, 3))
    for lv in range(3):
        assert np.array_equal(tree.parents[lv][tree.label_maps[lv]], tree.label_maps[lv + 1])


def test_bundled_baseline_and_concept_models():
    from cast.baselines import ViTKMeansSegmenter

    vit = cast.load_model("bundled_vit")
    assert not isinstance(vit, cast.CAST) and vit.info.name.startswith("vit_tiny")
    photo = np.asarray(Image.open(REPO_ROOT / "assets" / "examples" / "chelsea.jpg"))
    assert ViTKMeansSegmenter(vit, vit.info)(photo).num_segments[0] <= 64
    predictor = cast.Predictor("bundled_hirl")  # self-supervised cast_tiny with a HIRL concept tree
    assert predictor.concepts is not None and not predictor.has_head
    tree = predictor(photo)
    assert len(tree.concepts) == predictor.concepts.num_levels and all(step.thumbnails for step in tree.concepts)
    assert all(len(n.concepts) == predictor.concepts.num_levels for n in tree.nodes)
    size = sum(f.stat().st_size for f in (REPO_ROOT / "assets" / "bundled_hirl").rglob("*") if f.is_file())
    assert size <= 16 * 2**20


def test_bundled_flat_model_segments_an_example():
    """The flat cast_tiny trained beside the default model (one head, same data and budget)."""
    predictor = cast.Predictor("bundled_flat")
    assert predictor.info.name == "cast_tiny" and not isinstance(predictor.model, cast.HCAST)
    assert predictor.info.source == "bundled_flat" and len(predictor.info.class_names) == 10
    example = sorted(Path(REPO_ROOT / "assets" / "examples").glob("partshapes_house_*.png"))[0]
    tree = predictor(example)
    assert tree.taxonomy is None and tree.level_predictions[3][0][0] == "house"
    shards = list((REPO_ROOT / "assets" / "bundled_flat").glob("model-*.safetensors"))
    assert shards and sum(f.stat().st_size for f in shards) <= 15 * 2**20


def test_every_repository_file_fits_a_hub_space():
    """The Hub refuses files over 10 MiB outside Git LFS, and this repository has no LFS store."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        import pytest

        pytest.skip("not a git checkout")
    sizes = {f.decode(): (REPO_ROOT / f.decode()).stat().st_size for f in listed if f and (REPO_ROOT / f.decode()).is_file()}
    assert len(sizes) > 50 and "cast/assets/bundled/model.safetensors.index.json" in sizes
    too_big = {f: s for f, s in sizes.items() if s > 10 * 2**20}
    assert not too_big, f"files over 10 MiB (the Hub's limit outside Git LFS): {too_big}"
