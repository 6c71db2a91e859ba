"""The training package on CPU: one step of each objective, torchrun with 2 processes (gloo),
SIGKILL + --resume auto, config errors, export -> cast.load_model."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cast
from train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "train" / "configs"

# a small CAST and tiny PartShapes so that a step takes a fraction of a second on 2 cores
TINY = [
    "model.kwargs={embed_dim: 48, depths: [1, 1, 1, 1], num_heads: 2, num_clusters: [16, 8, 4, 2]}",
    "data.image_size=64", "data.train_size=48", "data.val_size=16", "data.num_workers=0",
    "data.superpixels.n_segments=40", "run.batch_size=8", "run.threads=1", "run.log_every=1",
    "moco.mlp_dim=64", "moco.dim=32", "moco.knn_train_size=16",
]


def tiny_cfg(config: str, tmp_path: Path, *extra: str):
    return load_config(CONFIGS / config, [*TINY, f"run.out_dir={tmp_path}", *extra])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(records: list[dict]) -> dict[int, tuple[float, float]]:
    """Last logged (loss, lr) per step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for r in records:
        if "loss" in r:
            out[r["step"]] = (r["loss"], r["lr"])
    return out


def run_train(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


@pytest.mark.parametrize("config,extra", [
    ("partshapes_cast_tiny.yaml", ["aug.mixup=0.8", "aug.cutmix=1.0"]),
    ("partshapes_moco_cast_tiny.yaml", ["run.grad_checkpointing=always"]),
    ("partshapes_vit_tiny.yaml", ["model.kwargs={}"]),
])
def test_one_cpu_step_of_each_objective(tmp_path, config, extra):
    from train.engine import Trainer

    cfg = tiny_cfg(config, tmp_path, "run.max_steps=1", "run.eval=false", *extra)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.dtype.is_floating_point}
    summary = trainer.fit()
    assert summary["step"] == 1
    assert getattr(trainer.model, "grad_checkpointing", False) == ("run.grad_checkpointing=always" in extra)
    losses = step_losses(read_metrics(trainer.run_dir))
    assert math.isfinite(losses[1][0]) and losses[1][0] > 0
    changed = [k for k, v in trainer.model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, "one optimizer step must change the weights"
    ckpt = torch.load(trainer.run_dir / "last.pt", weights_only=True)  # plain data only
    assert ckpt["step"] == 1 and ckpt["model_name"] == cfg.model.name and "rng" in ckpt
    assert (trainer.run_dir / "config.yaml").is_file() and any((trainer.run_dir / "tb").iterdir())
    if cfg.objective == "moco":
        # the key encoder gets no gradient: after one step (its EMA update ran before the step,
        # when both encoders were equal) it still holds the initial weights
        momentum = trainer.objective.momentum_model.state_dict()
        assert all(torch.allclose(momentum[k], v, rtol=1e-5, atol=1e-7) for k, v in before.items() if "running" not in k)
        assert all(not p.requires_grad for p in trainer.objective.momentum_model.parameters())


@pytest.mark.slow  # training runs
def test_supervised_validation_and_best_checkpoint(tmp_path):
    from train.engine import fit

    cfg = tiny_cfg("partshapes_cast_tiny.yaml", tmp_path, "schedule.epochs=2", "schedule.warmup_epochs=0")
    summary = fit(cfg)
    epochs = [r for r in read_metrics(Path(summary["run_dir"])) if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0.0 <= r["top1"] <= 1.0 for r in epochs)
    assert summary["best_metric"] == max(r["top1"] for r in epochs)
    assert (Path(summary["run_dir"]) / "best.pt").is_file()


@pytest.mark.slow  # training runs
def test_moco_knn_validation(tmp_path):
    from train.engine import fit

    cfg = tiny_cfg("partshapes_moco_cast_tiny.yaml", tmp_path, "schedule.epochs=1")
    summary = fit(cfg)
    epoch = [r for r in read_metrics(Path(summary["run_dir"])) if r.get("event") == "epoch"][0]
    assert 0.0 <= epoch["knn_top1"] <= 1.0


@pytest.mark.slow  # torchrun
def test_torchrun_two_processes_gloo(tmp_path):
    args = ["--standalone", "--nproc_per_node", "2", "-m", "train", "fit", "--config",
            str(CONFIGS / "partshapes_cast_tiny.yaml")]
    for s in [*TINY, f"run.out_dir={tmp_path}", "run.max_steps=3", "run.eval=false"]:
        args += ["--set", s]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "partshapes_cast_tiny"
    start = read_metrics(run_dir)[0]
    assert start["world_size"] == 2 and start["global_batch"] == 16
    assert max(step_losses(read_metrics(run_dir))) == 3
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and not any(k.startswith("module.") for k in ckpt["model"])
    # only rank 0 writes: one start line, one progress bar
    assert sum(1 for rec in read_metrics(run_dir) if rec.get("event") == "start") == 1


@pytest.mark.slow  # training runs
def test_sigkill_then_resume_auto_repeats_the_same_losses(tmp_path):
    common = [*TINY, "schedule.epochs=3", "run.save_every_steps=2", "data.train_size=64"]  # 8 steps/epoch
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"

    def fit_args(out: Path) -> list[str]:
        a = ["fit", "--config", str(CONFIGS / "partshapes_cast_tiny.yaml"), "--resume", "auto"]
        for s in [*common, f"run.out_dir={out}"]:
            a += ["--set", s]
        return a

    ref = run_train(*fit_args(ref_dir))
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = step_losses(read_metrics(ref_dir / "partshapes_cast_tiny"))
    assert max(reference) == 24

    proc = subprocess.Popen([sys.executable, "-m", "train", *fit_args(kill_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = kill_dir / "partshapes_cast_tiny" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.is_file() and max(step_losses(read_metrics(metrics.parent)) or {0: 0}) >= 11:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(step_losses(read_metrics(metrics.parent)))
    assert 11 <= killed_at < 24, "the run must be killed in the middle"
    last = torch.load(metrics.parent / "last.pt", weights_only=True)
    saved, saved_wall = last["step"], last["train_wall_s"]
    assert saved <= killed_at and saved % 2 == 0 and saved_wall > 0

    resumed = run_train(*fit_args(kill_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_metrics(metrics.parent)
    resume_event = [r for r in records if r.get("event") == "resume"]
    assert resume_event and resume_event[-1]["step"] == saved
    after = step_losses(records[records.index(resume_event[-1]):])
    assert sorted(after) == list(range(saved + 1, 25))
    for step, (loss, lr) in after.items():
        assert loss == pytest.approx(reference[step][0], rel=1e-5, abs=1e-6), f"step {step}"
        assert lr == pytest.approx(reference[step][1], rel=1e-9)
    # the run's wall time goes on from the checkpoint's: each epoch record has this sitting's and the whole run's
    for rec in (r for r in records[records.index(resume_event[-1]):] if r.get("event") == "epoch"):
        assert rec["train_wall_s"] == pytest.approx(saved_wall + rec["wall_s"], abs=0.5)
    for rec in (r for r in read_metrics(ref_dir / "partshapes_cast_tiny") if r.get("event") == "epoch"):
        assert rec["train_wall_s"] == pytest.approx(rec["wall_s"], abs=0.5)  # one sitting


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(CONFIGS / "partshapes_cast_tiny.yaml", ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="run.batch_size"):
        load_config(CONFIGS / "partshapes_cast_tiny.yaml", ["run.batch_size=big"])
    with pytest.raises(ConfigError, match="objective"):
        load_config(None, ["objective=dino"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: cast_tiny\n  widht: 3\n")
    with pytest.raises(ConfigError, match="model.widht"):
        load_config(bad)
    r = run_train("fit", "--config", str(bad))
    assert r.returncode == 2 and "model.widht" in r.stderr and "Traceback" not in r.stderr
    cfg = load_config(CONFIGS / "partshapes_cast_tiny.yaml", ["optim.base_lr=2e-3", "aug.scale=[0.3, 1.0]"])
    assert cfg.optim.base_lr == 2e-3 and cfg.aug.scale == (0.3, 1.0) and cfg.run.name == "partshapes_cast_tiny"


@pytest.mark.slow  # training runs
def test_export_then_load_model_gives_identical_outputs(tmp_path):
    import timm

    from train.engine import fit

    cfg = tiny_cfg("partshapes_cast_tiny.yaml", tmp_path, "run.max_steps=2")
    run_dir = Path(fit(cfg)["run_dir"])
    r = run_train("export", str(run_dir), "--out", str(tmp_path / "exported"), "--which", "last")
    assert r.returncode == 0, r.stderr
    loaded = cast.load_model(tmp_path / "exported")
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    direct = timm.create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    direct.load_state_dict({k[6:]: v for k, v in ckpt["model"].items() if k.startswith("model.")})
    direct.eval()
    x = torch.randn(2, 3, 64, 64)
    sp = (torch.arange(64)[:, None] // 8 * 8 + torch.arange(64)[None] // 8).expand(2, -1, -1)
    with torch.no_grad():
        assert torch.equal(loaded(x, sp), direct(x, sp))
    assert loaded.info.class_names == ckpt["class_names"] and loaded.info.input_size == 64
    assert loaded.info.superpixels.n_segments == 40
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "library_name: cast-explorer" in card and "cast_tiny" in card
    tree = cast.Predictor(loaded)(ROOT / "assets" / "examples" / "chelsea.jpg")
    assert tree.size == (451, 300)


@pytest.mark.slow  # training runs
def test_accumulation_ema_and_ema_export(tmp_path):
    from train.engine import Trainer

    cfg = tiny_cfg("partshapes_cast_tiny.yaml", tmp_path, "optim.accum_steps=2", "run.ema=true", "run.ema_decay=0.5",
                   "run.eval=false", "schedule.epochs=1", "optim.clip_grad=0.5")
    trainer = Trainer(cfg)
    assert trainer.steps_per_epoch == 3 and trainer.global_batch == 16  # 6 batches of 8, two per step
    summary = trainer.fit()
    assert summary["step"] == 3
    ckpt = torch.load(trainer.run_dir / "last.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    raw = {k[6:]: v for k, v in ckpt["model"].items() if k.startswith("model.")}
    assert not torch.equal(ema["head.weight"], raw["head.weight"]), "EMA weights trail the raw weights"
    r = run_train("export", str(trainer.run_dir), "--out", str(tmp_path / "ema"), "--which", "last", "--ema")
    assert r.returncode == 0, r.stderr
    loaded = cast.load_model(tmp_path / "ema")
    assert torch.equal(loaded.state_dict()["head.weight"], ema["head.weight"])
