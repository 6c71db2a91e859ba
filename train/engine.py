"""The one training loop, for every objective, from one CPU process to a torchrun GPU cluster."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel

import cast
from cast.taxonomy import Taxonomy, hierarchical_metrics

from . import distributed as D
from .checkpoint import find_resume, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, TrainConfig, config_to_dict
from .data.build import Datasets, build_datasets, build_loader
from .data.views import sample_seed
from .hier_vit import HierViT
from .hirl import HIRL
from .objectives import Hierarchical, MoCoV3, Objective, Supervised, encode, knn_top1

__all__ = ["Trainer", "build_model", "build_objective", "fit", "load_taxonomy", "hierarchical", "init_from",
           "level_predictions"]


def load_taxonomy(cfg: TrainConfig, class_names: list[str] | None = None) -> Taxonomy | None:
    """The configured taxonomy (``taxonomy.file``), checked against the dataset's classes."""
    spec = cfg.taxonomy.file
    if not spec:
        return None
    if spec in ("partshapes", "partshapes3"):
        from .data.partshapes import partshapes_taxonomy

        taxonomy = partshapes_taxonomy(3 if spec == "partshapes3" else 2)
    else:
        taxonomy = cast.load_taxonomy(spec)
    if class_names is not None and list(taxonomy.classes[0]) != list(class_names):
        raise ConfigError(f"taxonomy.file {spec}: its finest level must be the dataset's {len(class_names)} classes in "
                          f"their order ({', '.join(class_names[:5])}...), got {', '.join(taxonomy.classes[0][:5])}...")
    return taxonomy


def hierarchical(cfg: TrainConfig) -> bool:
    """Whether the configured model has one head per taxonomy level (``hcast_*``, or a ViT with a taxonomy:
    Hier-ViT); a flat ``cast_*`` with a taxonomy trains its one head, and is read up the tree."""
    return bool(cfg.taxonomy.file) and (cfg.model.name.startswith("hcast") or cfg.model.name not in cast.MODEL_NAMES)


def build_model(cfg: TrainConfig, num_classes: int, taxonomy: Taxonomy | None = None) -> nn.Module:
    """CAST (any registered ``cast_*`` / ``hcast_*``) or a timm ViT baseline (Hier-ViT with a taxonomy)
    at the configured input size."""
    import timm

    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("img_size", cfg.data.image_size)
    n = num_classes if cfg.objective == "supervised" else 0
    if cfg.model.name in cast.MODEL_NAMES:
        kwargs.setdefault("pos_embed", "learned" if cfg.objective == "supervised" else "sincos")
    if taxonomy is not None and hierarchical(cfg):
        if cfg.model.name in cast.MODEL_NAMES:
            return timm.create_model(cfg.model.name, level_classes=taxonomy.sizes, **kwargs)
        kwargs.pop("level_classes", None)
        return HierViT(timm.create_model(cfg.model.name, num_classes=0, **kwargs), taxonomy.sizes)
    return timm.create_model(cfg.model.name, num_classes=n, **kwargs)


def model_kwargs(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Arguments that rebuild ``model`` with ``timm.create_model(cfg.model.name, **kwargs)``."""
    if isinstance(model, cast.CAST):
        return dict(model.model_args)
    if isinstance(model, HierViT):
        return {**cfg.model.kwargs, "img_size": cfg.data.image_size, "num_classes": 0, "level_classes": model.level_classes}
    return {**cfg.model.kwargs, "img_size": cfg.data.image_size, "num_classes": getattr(model, "num_classes", 0)}


def init_from(model: nn.Module, source: str) -> dict[str, list[str]]:
    """Start ``model`` from the weights of ``source`` (``cast.load_model``'s sources): every tensor whose
    name and shape fit is copied, learned positions are resampled to the model's grid, the rest (heads of
    another shape) keep their fresh initialisation. Returns what was left fresh and what was not used."""
    from timm.layers import resample_abs_pos_embed

    theirs = cast.load_model(source).state_dict()
    mine = model.state_dict()
    if "pos_embed" in theirs and "pos_embed" in mine and theirs["pos_embed"].shape != mine["pos_embed"].shape:
        prefix = 1 if getattr(model, "pos_embed_type", "learned") == "learned" else 0
        side = int(round((mine["pos_embed"].shape[1] - prefix) ** 0.5))
        theirs["pos_embed"] = resample_abs_pos_embed(theirs["pos_embed"], [side, side], num_prefix_tokens=prefix)
    taken = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return {"fresh": sorted(set(mine) - set(taken)), "unused": sorted(set(theirs) - set(taken))}


def build_objective(cfg: TrainConfig, model: nn.Module, num_classes: int, num_train: int,
                    taxonomy: Taxonomy | None = None) -> Objective:
    """The configured objective around ``model``: supervised (per taxonomy level for a hierarchical
    model), MoCo-v3, or MoCo-v3 + HIRL."""
    if cfg.objective == "supervised":
        a = cfg.aug
        if taxonomy is not None and hierarchical(cfg):
            return Hierarchical(model, torch.tensor(taxonomy.paths()), taxonomy.sizes, a.mixup, a.cutmix, a.mix_prob,
                                a.label_smoothing, cfg.taxonomy.tree_kl_weight)
        return Supervised(model, num_classes, a.mixup, a.cutmix, a.mix_prob, a.label_smoothing)
    m = cfg.moco
    moco = dict(dim=m.dim, mlp_dim=m.mlp_dim, temperature=m.temperature, momentum=m.momentum)
    if cfg.hirl.enabled:
        h = cfg.hirl
        return HIRL(model, num_train, list(h.num_prototypes), h.hidden, h.temperature, h.num_negatives, h.weight,
                    h.representatives, warmup_epochs=h.warmup_epochs, recluster_every=h.recluster_every,
                    seed=cfg.run.seed, **moco)
    return MoCoV3(model, **moco)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`fit` runs the loop."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None) -> None:
        self.cfg = cfg
        self.dist = D.setup(cfg.run.device)
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        _seed_all(cfg.run.seed + self.dist.rank)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run.out_dir) / (cfg.run.name or "run")
        self.data: Datasets = build_datasets(cfg)
        self.num_classes = len(self.data.class_names)
        self.taxonomy = load_taxonomy(cfg, self.data.class_names)
        self.model = build_model(cfg, self.num_classes, self.taxonomy)
        ckpt = find_resume(resume, self.run_dir)
        if cfg.model.init and ckpt is None:  # a resumed run has its own weights
            report = init_from(self.model, cfg.model.init)
            self._log_line({"event": "init", "from": cfg.model.init, "fresh": report["fresh"][:20],
                            "unused": report["unused"][:20]})
        if self._use_grad_checkpointing():
            self.model.set_grad_checkpointing(True)
        self.objective: Objective = build_objective(cfg, self.model, self.num_classes, len(self.data.train), self.taxonomy)
        cuda = self.device.type == "cuda"
        if cuda and self.dist.distributed:
            self.objective = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
            self.model = self.objective.model  # type: ignore[assignment]
        self.objective.to(self.device)
        if cuda and cfg.run.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        self.wrapped: nn.Module = self.objective
        if self.dist.distributed:
            self.wrapped = DistributedDataParallel(self.objective, device_ids=[self.dist.local_rank] if cuda else None)

        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loader = build_loader(self.data.train, cfg.run.batch_size, train=True, seed=cfg.run.seed,
                                   world_size=self.dist.world_size, rank=self.dist.rank,
                                   num_workers=cfg.data.num_workers, pin_memory=cuda)
        if len(self.loader) < cfg.optim.accum_steps:
            raise ValueError(f"{len(self.loader)} batches per epoch is fewer than optim.accum_steps={cfg.optim.accum_steps}")
        self.steps_per_epoch = len(self.loader) // cfg.optim.accum_steps
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        self.global_batch = cfg.run.batch_size * self.dist.world_size * cfg.optim.accum_steps
        self.lr = cfg.optim.base_lr * self.global_batch / cfg.optim.lr_batch
        self.optimizer, self.scheduler = self._optimizer()
        self.ema = None
        if cfg.run.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.run.ema_decay)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_metric = -math.inf
        self.wall_before = 0.0  # seconds this run trained in earlier sittings (restored on resume)
        self.t_sitting = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.writer = None
        if ckpt is not None:
            self._restore(ckpt)

    # -- setup helpers ---------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.run.amp
        if amp == "none" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _use_grad_checkpointing(self) -> bool:
        """``run.grad_checkpointing``: "auto" trades compute for memory where memory is short, for
        the cast_base variants on a GPU."""
        mode = self.cfg.run.grad_checkpointing
        if mode == "auto":
            return self.device.type == "cuda" and self.cfg.model.name.startswith("cast_base")
        return mode == "always" and hasattr(self.model, "set_grad_checkpointing")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision as configured (``run.amp``); a no-op on the CPU by default."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        o, s = self.cfg.optim, self.cfg.schedule
        optimizer = create_optimizer_v2(self.objective, opt=o.opt, lr=self.lr, weight_decay=o.weight_decay,
                                        betas=tuple(o.betas))
        scheduler = CosineLRScheduler(
            optimizer, t_initial=self.total_steps, lr_min=s.min_lr, warmup_t=s.warmup_epochs * self.steps_per_epoch,
            warmup_lr_init=s.warmup_lr, t_in_epochs=False,
        )
        return optimizer, scheduler

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "best_metric": self.best_metric, "history": self.history,
            "train_wall_s": self.train_wall_s(),
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
            "model_name": self.cfg.model.name,
            "model_kwargs": model_kwargs(self.model, self.cfg),
            "class_names": self.data.class_names,
            "taxonomy": None if self.taxonomy is None else self.taxonomy.to_dict(),
        }

    def train_wall_s(self) -> float:
        """Wall time the run has taken so far, over every sitting (work redone after an interruption
        counts once: a sitting's time runs from its checkpoint)."""
        return self.wall_before + time.perf_counter() - self.t_sitting

    def save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(), self.run_dir / f"{name}.pt")

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.objective.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.batch_in_epoch, self.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        self.best_metric = ckpt["best_metric"]
        self.history = list(ckpt.get("history", []))
        self.wall_before = float(ckpt.get("train_wall_s", 0.0))
        set_rng_state(ckpt["rng"])
        self._log_line({"event": "resume", "from": str(path), "step": self.step, "epoch": self.epoch})

    # -- logging ---------------------------------------------------------------------------
    def _log_line(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    # -- the loop --------------------------------------------------------------------------
    def _to_device(self, batch: list[Any]) -> tuple[Any, ...]:
        out = []
        for x in batch:
            if isinstance(x, torch.Tensor):
                x = x.to(self.device, non_blocking=True)
                if x.dim() == 4 and self.device.type == "cuda" and self.cfg.run.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            out.append(x)
        return tuple(out)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            self._log_line({"event": "start", "world_size": self.dist.world_size, "global_batch": self.global_batch,
                            "lr": self.lr, "steps_per_epoch": self.steps_per_epoch, "device": str(self.device)})
        accum = cfg.optim.accum_steps
        stop = False
        self.t_sitting = time.perf_counter()
        try:
            while self.epoch < cfg.schedule.epochs and not stop:
                stop = self._train_epoch(accum)
                if stop:
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                metrics = self.validate() if cfg.run.eval else {}
                record = {"event": "epoch", "epoch": self.epoch, "step": self.step,
                          "wall_s": round(time.perf_counter() - self.t_sitting, 1),  # this sitting
                          "train_wall_s": round(self.train_wall_s(), 1), **metrics}  # every sitting, up to here
                self.history.append(record)
                self._log_line(record)
                for k, v in metrics.items():
                    self._scalar(f"val/{k}", v, self.step)
                metric = metrics.get("top1", metrics.get("knn_top1"))
                if metric is not None and metric > self.best_metric:
                    self.best_metric = metric
                    self.save("best")
                self.save("last")
                D.barrier()
        finally:
            if self.writer is not None:
                self.writer.close()
        return {"run_dir": str(self.run_dir), "step": self.step, "epoch": self.epoch, "best_metric": self.best_metric,
                "history": self.history}

    def _train_epoch(self, accum: int) -> bool:
        """One epoch (or its remainder after a resume); True when ``max_steps`` stopped the run."""
        start = self._start_epoch()
        n_batches = self.steps_per_epoch * accum
        bar = self._progress(n_batches, start, f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs}")
        window = _Window()
        it = iter(self.loader)
        try:
            for b in range(start, n_batches):
                batch = self._to_device(next(it))
                last_micro = (b % accum) == accum - 1
                window.add(self._forward_backward(batch, b, last_micro), batch[0].shape[0] * self.dist.world_size)
                if bar is not None:
                    bar.update(1)
                if not last_micro:
                    continue
                self._optimizer_step(b)
                self._log_step(window, accum, bar)
                if self._checkpoint_step():
                    return True
            return False
        finally:
            if bar is not None:
                bar.close()

    def _start_epoch(self) -> int:
        """Position the data at this epoch (skipping what a resumed run already saw), let the
        objective prepare (e.g. re-cluster), switch to training mode; returns the first batch."""
        self.data.train.set_epoch(self.epoch)
        sampler = self.loader.sampler
        sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]
        start = self.batch_in_epoch
        sampler.skip = start * self.cfg.run.batch_size  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        record = self.objective.on_epoch_start(self.epoch, self._embed_cluster_bank)
        if record:
            self._log_line({**record, "seconds": round(time.perf_counter() - t0, 1)})
        self.objective.train()
        return start

    def _forward_backward(self, batch: tuple[Any, ...], b: int, last_micro: bool) -> float:
        """Loss and gradients of one micro-batch (DDP syncs gradients on the last one only)."""
        # dropout, drop-path and mixup draw from these: seeded per (run, rank, batch) so a resumed
        # run repeats exactly what the uninterrupted one would have done
        _seed_all(sample_seed(self.cfg.run.seed + 7919 * self.dist.rank, self.epoch, b))
        self.objective.on_step(self.step / max(self.total_steps, 1))
        sync = contextlib.nullcontext()
        if self.dist.distributed and not last_micro:
            sync = self.wrapped.no_sync()  # type: ignore[operator]
        with sync:
            with self.autocast():
                out = self.wrapped(batch)
            loss = out["loss"]
            loss_value = float(loss.detach())  # the one host sync of the step (logging and the check)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {self.step}; lower the learning rate")
            self.scaler.scale(loss / self.cfg.optim.accum_steps).backward()
        return loss_value

    def _optimizer_step(self, b: int) -> None:
        """Clip, step, schedule and EMA after the last micro-batch of an optimizer step."""
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.objective.parameters() if p.requires_grad],
                                           self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_in_epoch = b + 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def _log_step(self, window: _Window, accum: int, bar: Any) -> None:
        """Every ``run.log_every`` steps: loss, learning rate and images/s to the log, TensorBoard, the bar."""
        step_loss = float(np.mean(window.losses[-accum:]))
        if self.dist.distributed:
            step_loss = D.all_reduce_sum([step_loss], self.device)[0] / self.dist.world_size
        if not (self.step % max(self.cfg.run.log_every, 1) == 0 or self.step == 1):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        img_s = window.rate()
        self._log_line({"step": self.step, "epoch": self.epoch, "loss": step_loss, "lr": lr, "img_s": img_s})
        self._scalar("train/loss", step_loss, self.step)
        self._scalar("train/lr", lr, self.step)
        self._scalar("train/img_s", img_s, self.step)
        if bar is not None:
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")

    def _checkpoint_step(self) -> bool:
        """Save ``last.pt`` when due; True when ``run.max_steps`` is reached (the run stops)."""
        run = self.cfg.run
        if run.save_every_steps and self.step % run.save_every_steps == 0:
            self.save("last")
        if run.max_steps and self.step >= run.max_steps:
            self.save("last")
            return True
        return False

    def _progress(self, total: int, initial: int, desc: str) -> Any:
        """A tqdm bar on rank 0 (None elsewhere)."""
        if not self.dist.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False)

    @torch.no_grad()
    def _embed_cluster_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final features of every image of the clustering bank (each rank embeds its share, then
        all are gathered): ``(features [N, D], dataset indices [N])``."""
        ds = self.data.cluster_bank
        if ds is None:
            raise RuntimeError("this objective asked for the training images' embeddings, but no clustering bank was built")
        self.objective.eval()
        # DistributedSampler without shuffling pads the shares to equal size; the objective de-duplicates
        loader = build_loader(ds, self.cfg.run.batch_size, train=False, seed=0, world_size=self.dist.world_size,
                              rank=self.dist.rank, num_workers=self.cfg.data.num_workers, pin_memory=False)
        feats, idx = [], []
        bar = self._progress(len(loader), 0, f"embedding the training images (epoch {self.epoch + 1})")
        for x, sp, _, index in loader:
            with self.autocast():
                feats.append(encode(self.model, x.to(self.device), sp.to(self.device)).float())
            idx.append(index.to(self.device))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return torch.cat(D.all_gather(torch.cat(feats))), torch.cat(D.all_gather(torch.cat(idx)))

    # -- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Top-1 (supervised) or weighted k-NN top-1 and the objective's own metrics (self-supervised)."""
        if self.data.val is None:
            return {}
        self.objective.eval()
        if self.cfg.objective == "supervised":
            return self._validate_supervised()
        result: dict[str, float] = {}
        if self.dist.is_main and self.data.knn_bank is not None:
            bank_x, bank_y = self._features(self.data.knn_bank)
            val_x, val_y = self._features(self.data.val)
            m = self.cfg.moco
            result["knn_top1"] = knn_top1(bank_x, bank_y, val_x, val_y, self.num_classes, m.knn_k, m.knn_t)
            result.update(self.objective.extra_metrics(val_x, val_y))
        if not self.dist.distributed:
            return result
        value = D.all_reduce_sum([result.get("knn_top1", 0.0)], self.device)[0]  # only rank 0 computed it
        return {**{k: v for k, v in result.items() if k != "knn_top1"}, "knn_top1": float(value)}

    def _validate_supervised(self) -> dict[str, float]:
        loader = build_loader(self.data.val, self.cfg.run.batch_size, train=False, seed=0,
                              world_size=self.dist.world_size, rank=self.dist.rank,
                              num_workers=self.cfg.data.num_workers, pin_memory=False)
        if self.taxonomy is not None:
            return self._validate_taxonomy(loader)
        correct = total = 0.0
        for batch in loader:
            x, sp, y = self._to_device(batch)
            with self.autocast():
                logits = encode(self.model, x, sp)
            correct += float((logits.argmax(1) == y).sum())
            total += float(y.numel())
        correct, total = D.all_reduce_sum([correct, total], self.device)
        return {"top1": correct / max(total, 1.0)}

    def _validate_taxonomy(self, loader: Any) -> dict[str, float]:
        """Per-level top-1, full-path accuracy and tree-inconsistency error (``top1`` = the fine level's),
        over every rank's images (:func:`cast.taxonomy.hierarchical_metrics`)."""
        assert self.taxonomy is not None
        paths = torch.tensor(self.taxonomy.paths(), device=self.device)
        predicted, truth = [], []
        for batch in loader:
            x, sp, y = self._to_device(batch)
            with self.autocast():
                predicted.append(level_predictions(encode(self.model, x, sp), paths))
            truth.append(paths[y])
        every = [torch.cat(D.all_gather(torch.cat(t))).cpu().numpy() for t in (predicted, truth)]
        m = hierarchical_metrics(every[0], every[1], self.taxonomy)
        names = self.taxonomy.level_names
        return {"top1": m["top1"][0], **{f"top1_{n}": v for n, v in zip(names, m["top1"])}, "fpa": m["fpa"], "tice": m["tice"]}

    def _features(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features ``[N, D]`` and labels ``[N]`` of a whole dataset, on this process."""
        loader = build_loader(ds, self.cfg.run.batch_size, train=False, seed=0, world_size=1, rank=0,
                              num_workers=self.cfg.data.num_workers, pin_memory=False)
        fs, ys = [], []
        for batch in loader:
            x, sp, y = self._to_device(batch)
            fs.append(encode(self.model, x, sp).float().cpu())
            ys.append(y.cpu())
        return torch.cat(fs), torch.cat(ys)


def level_predictions(logits: Any, paths: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` class per taxonomy level: each head's argmax, or for a flat model (one logits tensor
    over the fine classes) the fine argmax read up the tree."""
    if isinstance(logits, (tuple, list)):
        return torch.stack([lg.argmax(1) for lg in logits], dim=1)
    return paths[logits.argmax(1)]


class _Window:
    """Micro-batch losses of the epoch and the images seen since the last log line (for images/s)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seen = 0
        self.since = time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        self.losses.append(loss)
        self.seen += images

    def rate(self) -> float:
        """Images per second since the last call (or the start), then restart the count."""
        now = time.perf_counter()
        rate = self.seen / max(now - self.since, 1e-9)
        self.seen, self.since = 0, now
        return rate


def fit(cfg: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.fit()
    finally:
        D.teardown()
