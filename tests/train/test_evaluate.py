"""Evaluation: metrics on hand-made maps, the ViT + k-means baseline, evaluate() and report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cast
from cast.baselines import ViTKMeansSegmenter
from cast.clustering import hierarchical_kmeans
from cast.models import ConvStemViT
from train.metrics import boundary_f, consistency, miou, oracle_labels


def test_miou_and_oracle_labels():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    assert miou(gt, gt) == 1.0
    pred = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [2, 2, 2, 2]])
    # class 0: 4/5, class 1: 3/4, class 2: 4/4
    assert miou(pred, gt) == pytest.approx(np.mean([4 / 5, 3 / 4, 1.0]))
    segments = np.array([[5, 5, 7, 7], [5, 5, 5, 7], [9, 9, 9, 9]])
    assert np.array_equal(oracle_labels(segments, gt), pred)


def test_consistency_and_boundaries():
    obj = np.zeros((10, 10), np.uint8)
    obj[:, :5] = 1
    segs = np.zeros((10, 10), int)
    segs[:, 5:] = 1
    assert consistency(segs, obj) == 1.0
    segs[0, 5] = 0  # segment 0 now 98 % inside the object: still consistent
    assert consistency(segs, obj) == 1.0
    segs[:, 4:6] = 2  # a segment straddling the boundary half and half
    assert consistency(segs, obj) == pytest.approx(2 / 3)
    gt = np.zeros((20, 20), int)
    gt[:, 10:] = 1
    shifted = np.zeros((20, 20), int)
    shifted[:, 11:] = 1
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(shifted, gt, tolerance=2) == 1.0
    far = np.zeros((20, 20), int)
    far[:, 16:] = 1
    assert boundary_f(far, gt, tolerance=2) == 0.0


def test_hierarchical_kmeans_nests_and_counts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    levels = hierarchical_kmeans(x, (64, 32, 16, 8))
    assert [int(lv.max()) + 1 for lv in levels] == [64, 32, 16, 8]
    for fine, coarse in zip(levels, levels[1:]):
        for c in fine.unique():
            assert coarse[fine == c].unique().numel() == 1
    assert all(torch.equal(a, b) for a, b in zip(levels, hierarchical_kmeans(x, (64, 32, 16, 8))))  # deterministic


def test_vit_kmeans_segmenter_gives_a_valid_hierarchy(photo):
    from tests.helpers import check_invariants

    model = ConvStemViT(img_size=64, embed_dim=48, depth=1, num_heads=2, num_classes=3).eval()
    info = cast.ModelInfo(name="vit_conv_small", family="test", input_size=64, class_names=["a", "b", "c"])
    tree = ViTKMeansSegmenter(model, info, num_clusters=(12, 6, 3, 2))(photo[:90, :120])
    check_invariants(tree, 120, 90)
    assert tree.num_segments == [12, 6, 3, 2]
    assert tree.level_predictions[0] == tree.level_predictions[3]  # one head: same answer per level


def test_published_conv_stem_vit_file_loads(tmp_path):
    vit = ConvStemViT()
    sd = {"module.base_encoder." + k: v for k, v in vit.state_dict().items()}
    sd["module.base_encoder.head.0.weight"] = torch.zeros(4, 384)  # projector: dropped
    sd["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 384)
    path = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"epoch": 100, "arch": "vit_conv_small", "state_dict": sd}, path)
    model = cast.load_model(path)
    assert isinstance(model, ConvStemViT) and model.info.name == "vit_conv_small"
    assert torch.equal(model.state_dict()["blocks.10.mlp.fc2.weight"], vit.state_dict()["blocks.10.mlp.fc2.weight"])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny CAST and a tiny timm ViT in our format, both with the 10 PartShapes classes."""
    import timm

    from cast.loading import save_own_format
    from cast.superpixels import SuperpixelSettings
    from train.data.partshapes import CLASSES

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    c = timm.create_model("cast_tiny", img_size=64, embed_dim=48, depths=(1, 1, 1, 1), num_heads=2,
                          num_clusters=(16, 8, 4, 2), num_classes=len(CLASSES), pos_embed="learned").eval()
    sp = SuperpixelSettings("seeds", 40, {"histogram_bins": 5, "num_iterations": 4})
    c.info = cast.ModelInfo(name="cast_tiny", family="test", superpixels=sp, input_size=64, class_names=list(CLASSES))
    save_own_format(c, root / "cast")
    v = cast.loading.build_model("vit_tiny_patch16_224", img_size=64, num_classes=len(CLASSES)).eval()
    v.info = cast.ModelInfo(name="vit_tiny_patch16_224", family="test", superpixels=sp, input_size=64,
                            class_names=list(CLASSES))
    save_own_format(v, root / "vit", dtype=torch.float16)
    return root


@pytest.mark.slow  # full evaluation runs
def test_evaluate_cast_and_vit_end_to_end(tiny_models, tmp_path):
    from train.evaluate import evaluate, format_table, load_eval_data
    from train.report import write_report

    data = load_eval_data("partshapes:test", n=2, image_size=64)
    ref = load_eval_data("partshapes:train", n=2, image_size=64)
    out = tmp_path / "results"
    out.mkdir()
    for name in ("cast", "vit"):
        r = evaluate(str(tiny_models / name), data, model_label_n=1, ref=ref, ref_n=2, progress=False)
        assert r["images"] == 2 and 0 <= r["top1"] <= 1 and r["gmacs"] > 0
        assert set(r["levels"]) == {"1", "2", "3", "4"}
        lv1, lv4 = r["levels"]["1"], r["levels"]["4"]
        for key in ("part_miou_oracle", "object_miou_oracle", "part_miou_model", "object_miou_model",
                    "consistency", "boundary_f"):
            assert 0.0 <= lv1[key] <= 1.0 and 0.0 <= lv4[key] <= 1.0
        # finer segments can only fit the ground truth better under oracle labelling
        assert lv1["object_miou_oracle"] >= lv4["object_miou_oracle"] - 1e-9
        assert "| 1 |" in format_table(r)
        (out / f"{name}.json").write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\n## After\n")
    write_report(out, readme, tmp_path / "figures", data="partshapes:test", models=[str(tiny_models / "cast")])
    text = readme.read_text()
    assert "old" not in text and "| cast |" in text and "## After" in text
    assert (tmp_path / "figures" / "miou_per_level.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "gallery.png").stat().st_size > 1000


@pytest.mark.slow  # full evaluation runs
def test_evaluate_on_an_exported_folder(tiny_models, tmp_path):
    from train.data.partshapes import export
    from train.evaluate import evaluate, load_eval_data

    folder = export(tmp_path / "ps", split="test", n=3, image_size=64, progress=False)
    data = load_eval_data(str(folder))
    assert len(data) == 3 and data.classes[0] == "car"
    r = evaluate(str(tiny_models / "cast"), data, model_label_n=0, progress=False)
    assert r["images"] == 3 and "part_miou_model" not in r["levels"]["1"]
