"""HIRL: prototype trees, negative paths, training (resumable, torchrun), export and inference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cast
from cast.clustering import kmeans_tree
from cast.concepts import load_concepts
from train.config import ConfigError, load_config
from train.engine import fit
from train.export import export_run
from train.hirl import HIRL
from train.metrics import purity

from .test_train import CONFIGS, ROOT, TINY, read_metrics

HIRL_TINY = [*TINY, "hirl.num_prototypes=[8, 4, 2]", "hirl.representatives=2"]


def clustered_points(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 well-separated groups, each of 3 sub-groups of 20 points, in 16 dimensions."""
    g = torch.Generator().manual_seed(seed)
    group_centres = F.normalize(torch.randn(3, 16, generator=g), dim=1) * 4
    pts, sub, grp = [], [], []
    for a in range(3):
        for b in range(3):
            centre = group_centres[a] + F.normalize(torch.randn(16, generator=g), dim=0)
            pts.append(centre + 0.05 * torch.randn(20, 16, generator=g))
            sub += [3 * a + b] * 20
            grp += [a] * 20
    return torch.cat(pts), torch.tensor(sub), torch.tensor(grp)


def test_prototype_tree_nests_and_finds_the_groups():
    x, sub, grp = clustered_points()
    protos, parents, paths = kmeans_tree(x, [9, 3], seed=0)
    assert [p.shape for p in protos] == [(9, 16), (3, 16)]
    assert torch.allclose(protos[0].norm(dim=1), torch.ones(9), atol=1e-5)
    assert torch.equal(paths[:, 1], parents[0][paths[:, 0]])  # a tree: level-2 id = parent of the level-1 id
    assert torch.equal(parents[1], torch.zeros(3, dtype=torch.long))
    assert purity(paths[:, 0], sub) == 1.0 and purity(paths[:, 1], grp) == 1.0
    assert purity(torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 2])) == 0.5


def _hirl_with_tree() -> HIRL:
    backbone = torch.nn.Linear(4, 16)
    backbone.num_features = 16
    obj = HIRL(backbone, num_train=180, num_prototypes=[9, 3], num_negatives=64, dim=8, mlp_dim=16)
    x, _, _ = clustered_points()
    obj.cluster(x, torch.arange(180), epoch=1)
    return obj


def test_negative_paths_are_other_tree_paths():
    obj = _hirl_with_tree()
    torch.manual_seed(0)
    paths = obj.paths[:50]
    neg = obj.sample_negatives(paths)  # [B, K, L]
    assert neg.shape == (50, 64, 2)
    assert not (neg[..., 0] == paths[:, None, 0]).any()  # never the image's own finest prototype
    assert (neg[..., 1] == paths[:, None, 1]).any() and (neg[..., 1] != paths[:, None, 1]).any()  # siblings and others
    leaf = obj.concepts.leaf_paths()
    assert torch.equal(neg[..., 1], leaf[neg[..., 0], 1])  # negatives are real paths of the tree


def test_cluster_records_paths_and_representatives_and_path_loss_learns():
    obj = _hirl_with_tree()
    assert obj.active and int(obj.clustered_epoch) == 1
    assert (obj.paths >= 0).all()
    reps = obj.representatives  # [L, M_max, R]
    for lv in range(2):
        for k in range(obj.concepts.num_prototypes[lv]):
            members = reps[lv, k][reps[lv, k] >= 0]
            assert len(members) > 0 and (obj.paths[members, lv] == k).all()
    # the heads learn to put each image on its own path
    x, _, _ = clustered_points()
    opt = torch.optim.Adam(obj.concepts.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = float(obj.path_loss(x, torch.arange(180)).detach())
    for _ in range(250):
        loss = obj.path_loss(x, torch.arange(180))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert (obj.concepts.nearest(x) == obj.paths).float().mean() > 0.95


def test_config_checks():
    with pytest.raises(ConfigError, match="objective: moco"):
        load_config(CONFIGS / "partshapes_cast_tiny.yaml", ["hirl.enabled=true"])
    with pytest.raises(ConfigError, match="decrease"):
        load_config(CONFIGS / "partshapes_hirl_cast_tiny.yaml", ["hirl.num_prototypes=[4, 8]"])


@pytest.fixture(scope="module")
def hirl_run(tmp_path_factory):
    """A tiny HIRL run: 3 epochs, clustering before epochs 2 and 3."""
    out = tmp_path_factory.mktemp("hirl")
    cfg = load_config(CONFIGS / "partshapes_hirl_cast_tiny.yaml", [*HIRL_TINY, "schedule.epochs=3", f"run.out_dir={out}"])
    summary = fit(cfg)
    return Path(summary["run_dir"])


@pytest.mark.slow  # a training run (the hirl_run fixture)
def test_training_clusters_after_warmup_and_logs_purity(hirl_run):
    records = read_metrics(hirl_run)
    clusters = [r for r in records if r.get("event") == "hirl_cluster"]
    assert [c["epoch"] for c in clusters] == [1, 2] and all(c["images"] == 48 for c in clusters)
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert "hirl_purity_l1" not in epochs[0] and all(0 < epochs[-1][f"hirl_purity_l{lv}"] <= 1 for lv in (1, 2, 3))
    ckpt = torch.load(hirl_run / "last.pt", weights_only=True)
    assert int(ckpt["model"]["clustered_epoch"]) == 2 and (ckpt["model"]["paths"] >= 0).all()
    assert ckpt["model"]["concepts.prototypes_2"].shape == (2, 48)


@pytest.mark.slow  # a training run (the hirl_run fixture)
def test_resume_continues_with_the_saved_prototypes(hirl_run, tmp_path):
    """Stopped after two of three epochs, then resumed: the same prototypes and losses as the
    uninterrupted run (the third epoch starts by clustering again, from the restored state)."""
    args = [*HIRL_TINY, "schedule.epochs=3", f"run.out_dir={tmp_path}"]
    fit(load_config(CONFIGS / "partshapes_hirl_cast_tiny.yaml", [*args, "run.max_steps=12"]))  # 6 steps per epoch
    stopped = torch.load(tmp_path / hirl_run.name / "last.pt", weights_only=True)["model"]
    assert int(stopped["clustered_epoch"]) == 1
    fit(load_config(CONFIGS / "partshapes_hirl_cast_tiny.yaml", args), resume="auto")
    resumed = torch.load(tmp_path / hirl_run.name / "last.pt", weights_only=True)["model"]
    straight = torch.load(hirl_run / "last.pt", weights_only=True)["model"]
    for k in ("concepts.prototypes_0", "concepts.parents_0", "paths", "representatives"):
        assert torch.equal(resumed[k], straight[k]), k
    losses = {r["step"]: r["loss"] for r in read_metrics(hirl_run) if "loss" in r}
    resumed_losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / hirl_run.name) if "loss" in r}
    assert resumed_losses[max(losses)] == pytest.approx(losses[max(losses)], rel=1e-5)


@pytest.mark.slow  # torchrun
def test_torchrun_two_processes_gather_every_image(tmp_path):
    args = ["--standalone", "--nproc_per_node", "2", "-m", "train", "fit", "--config",
            str(CONFIGS / "partshapes_hirl_cast_tiny.yaml")]
    for s in [*HIRL_TINY, f"run.out_dir={tmp_path}", "schedule.epochs=2", "hirl.warmup_epochs=0", "data.train_size=40"]:
        args += ["--set", s]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(tmp_path / "partshapes_hirl_cast_tiny")
    clusters = [rec for rec in records if rec.get("event") == "hirl_cluster"]
    assert [c["images"] for c in clusters] == [40, 40]  # both ranks' shares, gathered
    ckpt = torch.load(tmp_path / "partshapes_hirl_cast_tiny" / "last.pt", weights_only=True)
    assert (ckpt["model"]["paths"] >= 0).all()


@pytest.mark.slow  # a training run (the hirl_run fixture)
def test_export_then_predict_gives_concept_paths(hirl_run, tmp_path, photo):
    out = export_run(hirl_run, tmp_path / "exported", which="last")
    concepts = load_concepts(out)
    assert concepts is not None and concepts.num_prototypes == [8, 4, 2]
    assert any(concepts.thumbnails.values()) and all(Path(f).is_file() for fs in concepts.thumbnails.values() for f in fs)
    ckpt = torch.load(hirl_run / "last.pt", weights_only=True)["model"]
    assert torch.equal(concepts.prototypes(1), ckpt["concepts.prototypes_0"])
    predictor = cast.Predictor(str(out))
    assert predictor.concepts is not None
    tree = predictor(photo)
    assert [s.level for s in tree.concepts] == [1, 2, 3]
    leaf = tree.concepts[0].id
    assert tree.concepts[1].id == int(concepts.parents(1)[leaf]) and tree.concepts[2].id == int(concepts.parents(2)[tree.concepts[1].id])
    assert all(0 < s.confidence <= 1 for s in tree.concepts)
    for node in tree.nodes:
        assert len(node.concepts) == 3 and all(0 <= c < m for c, m in zip(node.concepts, [8, 4, 2]))
    d = json.loads(tree.to_json())
    assert d["concepts"][0]["level"] == 1 and "concepts" in d["nodes"][0]
    # a model without concepts says so by None
    assert cast.Predictor(cast.load_model("bundled")).concepts is None
    assert cast.Predictor("bundled")(np.asarray(photo)).concepts is None


@pytest.mark.slow  # a training run (the hirl_run fixture)
def test_concepts_evaluation_of_hirl_and_plain_models(hirl_run, tmp_path, tiny_model_dir):
    from train.concepts_eval import run

    exported = export_run(hirl_run, tmp_path / "hirl_model", which="last")
    results = run([str(exported), str(tiny_model_dir)], "partshapes:test:20", "partshapes:train:30", str(tmp_path / "out"),
                  image_size=64)
    hirl, plain = results
    assert hirl["concepts"].startswith("HIRL") and plain["concepts"].startswith("hierarchical spherical k-means")
    for r in results:
        assert 0 <= r["knn_top1"] <= 1 and 0 <= r["linear_top1"] <= 1
        assert [row["level"] for row in r["levels"]] == [1, 2, 3]
        for row in r["levels"]:
            assert 0 < row["purity_classes"] <= 1 and row["purity_coarse"] >= row["purity_classes"] - 1e-9
    assert hirl["num_prototypes"] == [8, 4, 2]
    assert json.loads((tmp_path / "out" / "hirl_model.json").read_text())["n"] == 20


@pytest.mark.slow  # a training run (the hirl_run fixture)
def test_concepts_load_from_an_offline_hub_repo(hirl_run, tmp_path, hub_cache, photo):
    from tests.helpers import populate_hub_cache

    out = export_run(hirl_run, tmp_path / "exported", which="last")
    files = {str(f.relative_to(out)): f for f in out.rglob("*") if f.is_file()}
    assert any(name.startswith("concepts/") for name in files)
    populate_hub_cache(hub_cache, "someone/cast-tiny-hirl", files)
    predictor = cast.Predictor("someone/cast-tiny-hirl")
    assert predictor.concepts is not None and predictor.concepts.num_prototypes == [8, 4, 2]
    tree = predictor(photo)
    assert all(Path(t).is_file() for step in tree.concepts for t in step.thumbnails)
    from cast.loading import load_concepts_of

    assert load_concepts_of("someone/not-in-the-cache") is None  # offline and absent: no concepts, no error
