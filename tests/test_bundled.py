"""The bundled default model in assets/bundled: small, loadable offline, and it segments photos."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

import cast
from cast.weights import REPO_ROOT

BUNDLED = REPO_ROOT / "assets" / "bundled"


def test_bundled_files_and_size():
    assert (BUNDLED / "config.json").is_file() and (BUNDLED / "model.safetensors").is_file()
    assert (BUNDLED / "model.safetensors").stat().st_size <= 15 * 2**20
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config["architecture"] == "cast_tiny" and len(config["info"]["class_names"]) == 10
    assert (BUNDLED / "class_names.txt").read_text().split("\n")[0] == config["info"]["class_names"][0]


def test_bundled_model_segments_an_example(monkeypatch):
    monkeypatch.delenv("CAST_BUNDLED_DIR", raising=False)
    predictor = cast.Predictor("bundled")
    assert predictor.info.source == "bundled" and predictor.info.name == "cast_tiny"
    example = sorted(Path(REPO_ROOT / "assets" / "examples").glob("partshapes_house_*.png"))[0]
    tree = predictor(example)
    assert tree.size == (160, 160) and tree.num_segments[3] >= 2
    assert tree.level_predictions[3][0][0] == "house"
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
