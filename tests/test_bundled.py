"""The bundled default model in assets/bundled: small, loadable offline, and it segments photos."""

import json
from pathlib import Path

import numpy as np

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
