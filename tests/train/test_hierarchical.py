"""Training on a taxonomy: PartShapes' taxonomies, H-CAST's loss, H-CAST / Hier-ViT / flat CAST runs with
per-level validation, fine-tuning H-CAST from a flat checkpoint, torchrun, export -> cast.load_model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data.mixup import mixup_target

import cast
from tests.train.test_train import CONFIGS, ROOT, TINY, read_metrics, tiny_cfg
from train.config import ConfigError
from train.data.partshapes import CLASSES, COARSE_GROUPS, partshapes_taxonomy
from train.objectives import Hierarchical, SuperpixelMixup

TINY_H = [s for s in TINY if not s.startswith("model.kwargs")] + [
    "model.kwargs={embed_dim: 48, depths: [1, 1, 1, 1], num_heads: 2, num_clusters: [16, 8, 4, 2]}"]


def test_partshapes_taxonomies_group_the_ten_classes():
    two, three = partshapes_taxonomy(2), partshapes_taxonomy(3)
    assert two.sizes == (10, 3) and three.sizes == (10, 3, 2) and two.classes[0] == CLASSES
    for group, members in COARSE_GROUPS.items():
        for c in members:
            assert two.names_of(two.ancestors(CLASSES.index(c)))[1] == group
    assert three.names_of(three.ancestors(CLASSES.index("tree"))) == ("tree", "plants", "living")
    assert three.names_of(three.ancestors(CLASSES.index("car")))[2] == "made"
    with pytest.raises(ValueError):
        partshapes_taxonomy(4)


class Fixed(nn.Module):
    """A 'model' returning given per-level logits (whatever the images)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = [nn.Parameter(lg.clone()) for lg in logits]
        for i, p in enumerate(self.logits):
            self.register_parameter(f"l{i}", p)

    def forward(self, images):
        return tuple(self.logits)


def test_the_loss_is_per_level_cross_entropy_plus_the_tree_path_kl():
    tax = partshapes_taxonomy(3)
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, n, generator=g) for n in tax.sizes]
    fine = torch.tensor([0, 4, 7, 9])
    batch = (torch.zeros(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long), fine)
    paths = torch.tensor(tax.paths())
    for weight in (0.0, 0.5):
        objective = Hierarchical(Fixed(logits), paths, tax.sizes, label_smoothing=0.1, tree_kl_weight=weight).train()
        got = objective(batch)["loss"]
        soft = [mixup_target(paths[fine][:, t], n, 1.0, 0.1) for t, n in enumerate(tax.sizes)]
        ce = sum(-(st * lg.log_softmax(1)).sum(1).mean() for lg, st in zip(logits, soft))
        goal = torch.cat(soft, 1) / 3
        kl = (goal * (goal.log() - torch.cat(logits, 1).log_softmax(1))).sum(1).mean()
        torch.testing.assert_close(got, ce + weight * kl)
    objective.eval()  # validation: plain cross-entropy per level, on the true labels
    expected = sum(F.cross_entropy(lg, paths[fine][:, t]) for t, lg in enumerate(logits))
    torch.testing.assert_close(objective(batch)["loss"], expected)


def test_mixup_mixes_every_level_with_one_lambda():
    x, sp = torch.randn(4, 3, 16, 16), torch.arange(256).reshape(16, 16).expand(4, -1, -1).clone()
    y = torch.tensor([1, 2, 3, 4])
    mixer = SuperpixelMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    torch.manual_seed(5)
    np.random.seed(5)
    _, _, soft = mixer(x.clone(), sp, y)
    torch.manual_seed(5)
    np.random.seed(5)
    _, _, lam = mixer.mix(x.clone(), sp)
    torch.testing.assert_close(soft, mixup_target(y, 10, lam, 0.1))
    assert 0.0 <= lam <= 1.0


@pytest.mark.parametrize("config", ["partshapes_hcast_tiny.yaml", "partshapes_hier_vit_tiny.yaml"])
def test_one_step_with_per_level_heads(tmp_path, config):
    from train.engine import Trainer

    extra = ["model.kwargs={}"] if "vit" in config else []
    cfg = tiny_cfg(config, tmp_path, "run.max_steps=1", "run.eval=false", "aug.mixup=0.8", "aug.cutmix=1.0", *extra)
    trainer = Trainer(cfg)
    assert isinstance(trainer.objective, Hierarchical) and trainer.taxonomy.sizes == (10, 3)
    assert trainer.fit()["step"] == 1
    ckpt = torch.load(trainer.run_dir / "last.pt", weights_only=True)
    assert ckpt["taxonomy"] == partshapes_taxonomy(2).to_dict() and ckpt["model_kwargs"]["level_classes"] == [10, 3]


def test_config_errors_name_the_taxonomy(tmp_path):
    with pytest.raises(ConfigError, match="taxonomy.file"):
        tiny_cfg("partshapes_hcast_tiny.yaml", tmp_path, "taxonomy.file=")
    with pytest.raises(ConfigError, match="supervised"):
        tiny_cfg("partshapes_moco_cast_tiny.yaml", tmp_path, "taxonomy.file=partshapes")
    wrong = tmp_path / "tax.json"
    cast.Taxonomy(("class", "group"), (tuple("abcdefghij"), ("x", "y")), ((0,) * 5 + (1,) * 5,)).save(wrong)
    from train.engine import Trainer

    with pytest.raises(ConfigError, match="finest level must be the dataset's 10 classes"):
        Trainer(tiny_cfg("partshapes_hcast_tiny.yaml", tmp_path, f"taxonomy.file={wrong}"))


def test_hcast_fine_tunes_from_a_flat_cast_with_fresh_heads_and_resampled_positions(tmp_path):
    from train.engine import Trainer

    flat = cast.load_model("bundled_flat")  # cast_tiny at 160 px, a 10-class head
    cfg = tiny_cfg("partshapes_hcast_tiny.yaml", tmp_path, "model.kwargs={}", "data.image_size=96",
                   "run.max_steps=1", "run.eval=false", "model.init=bundled_flat")
    trainer = Trainer(cfg)
    mine, theirs = trainer.model.state_dict(), flat.state_dict()
    assert torch.equal(mine["blocks.3.attn.qkv.weight"], theirs["blocks.3.attn.qkv.weight"])
    assert mine["pos_embed"].shape == (1, 1 + 12 * 12, 192) and theirs["pos_embed"].shape == (1, 1 + 20 * 20, 192)
    torch.testing.assert_close(mine["pos_embed"][:, 0], theirs["pos_embed"][:, 0])  # [CLS]'s slot kept
    assert torch.equal(mine["head.weight"], theirs["head.weight"])  # same 10 classes: the fine head fits
    init = [r for r in read_metrics(trainer.run_dir) if r.get("event") == "init"][0]
    assert init["fresh"] == ["family_head.bias", "family_head.weight"]


@pytest.mark.slow  # training runs
def test_runs_validate_per_level_and_export_a_model_that_predicts_the_taxonomy(tmp_path):
    from train.engine import fit
    from train.export import ExportError, export_run

    common = ["schedule.epochs=1", "schedule.warmup_epochs=0", "data.val_size=24"]
    h = fit(tiny_cfg("partshapes_hcast_tiny.yaml", tmp_path, *common))
    epoch = [r for r in read_metrics(tmp_path / "partshapes_hcast_tiny") if r.get("event") == "epoch"][0]
    assert {"top1", "top1_class", "top1_group", "fpa", "tice"} <= set(epoch) and epoch["top1"] == epoch["top1_class"]
    assert epoch["fpa"] <= min(epoch["top1_class"], epoch["top1_group"]) and 0 <= epoch["tice"] <= 1
    flat = fit(tiny_cfg("partshapes_cast_tiny.yaml", tmp_path, *common, "taxonomy.file=partshapes"))
    flat_epoch = [r for r in read_metrics(tmp_path / "partshapes_cast_tiny") if r.get("event") == "epoch"][0]
    assert flat_epoch["tice"] == 0.0  # fine predictions read up the tree are always paths
    out = export_run(h["run_dir"], tmp_path / "export")
    model = cast.load_model(out)
    assert isinstance(model, cast.HCAST) and model.info.taxonomy == partshapes_taxonomy(2)
    assert model.info.extra["metrics"]["fpa"] == epoch["fpa"]
    from PIL import Image

    tree = cast.load_segmenter(model, refine=False)(Image.new("RGB", (80, 64), (200, 30, 30)))
    assert [lv.name for lv in tree.taxonomy.levels] == ["class", "group"] and tree.taxonomy.heads_agree is not None
    assert cast.load_model(export_run(flat["run_dir"], tmp_path / "flat")).info.taxonomy == partshapes_taxonomy(2)
    v = fit(tiny_cfg("partshapes_hier_vit_tiny.yaml", tmp_path, *common, "model.kwargs={}", "run.max_steps=1"))
    with pytest.raises(ExportError, match="Hier-ViT"):
        export_run(v["run_dir"], tmp_path / "vit")

    # evaluation: per-level top-1, FPA, TICE beside the segmentation metrics; Hier-ViT from its run
    from train.evaluate import evaluate, evaluate_run, load_eval_data

    data = load_eval_data("partshapes:test:6", image_size=64)
    result = evaluate(str(out), data, model_label_n=2, ref=None, progress=False)
    tax = result["taxonomy"]
    assert tax["levels"] == ["class", "group"] and tax["n"] == 6 and result["levels"]["1"]["num_segments"] > 0
    assert tax["top1"][0] == result["top1"] and tax["fpa"] <= min(tax["top1"]) and "fpa_consistent" in tax
    flat_result = evaluate(str(tmp_path / "flat"), data, model_label_n=0, ref=None, progress=False)
    assert flat_result["taxonomy"]["tice"] == 0.0 and "fpa_consistent" not in flat_result["taxonomy"]
    run_result = evaluate_run(v["run_dir"], data, progress=False)
    assert run_result["taxonomy"]["n"] == 6 and run_result["levels"] == {} and run_result["architecture"] == "hier-vit_tiny_patch16_224"
    from train.__main__ import main

    assert main(["evaluate", "--model", v["run_dir"], "--data", "partshapes:test:4", "--size", "64",
                 "--out", str(tmp_path / "results"), "--name", "hier_vit"]) == 0
    saved = json.loads((tmp_path / "results" / "hier_vit.json").read_text())
    assert saved["taxonomy"]["levels"] == ["class", "group"]


@pytest.mark.slow  # torchrun
def test_torchrun_two_processes_train_hcast(tmp_path):
    args = ["--standalone", "--nproc_per_node", "2", "-m", "train", "fit", "--config", str(CONFIGS / "partshapes_hcast_tiny.yaml")]
    for s in [*TINY_H, f"run.out_dir={tmp_path}", "schedule.epochs=1", "schedule.warmup_epochs=0", "data.val_size=16"]:
        args += ["--set", s]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    records = read_metrics(tmp_path / "partshapes_hcast_tiny")
    assert records[0]["world_size"] == 2 and max(rec.get("step", 0) for rec in records) == 3  # 48 images / (2 x 8)
    epoch = [rec for rec in records if rec.get("event") == "epoch"]  # validation gathered from both ranks
    assert len(epoch) == 1 and {"top1_class", "top1_group", "fpa", "tice"} <= set(epoch[0])
    ckpt = torch.load(tmp_path / "partshapes_hcast_tiny" / "last.pt", weights_only=True)
    assert json.dumps(ckpt["taxonomy"]) and ckpt["model_kwargs"]["level_classes"] == [10, 3]
