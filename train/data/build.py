"""Datasets and loaders for a training run, from the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from cast.superpixels import SuperpixelSettings

from ..config import ConfigError, TrainConfig
from .views import ViewDataset, eval_view, moco_views, supervised_train_view

__all__ = ["Datasets", "build_datasets", "build_loader", "SkipSampler", "superpixel_settings"]


@dataclass
class Datasets:
    train: ViewDataset
    val: ViewDataset | None
    knn_bank: ViewDataset | None  # train images without augmentation (k-NN validation)
    class_names: list[str]
    cluster_bank: ViewDataset | None = None  # every train image without augmentation, with its index (HIRL)


def superpixel_settings(cfg: TrainConfig) -> SuperpixelSettings:
    sp = cfg.data.superpixels
    return SuperpixelSettings(sp.method, int(sp.n_segments), dict(sp.params))


class _Subset(Dataset):
    """The first ``n`` items of a dataset, spread evenly over it (so all classes appear)."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base = base
        total = len(base)  # type: ignore[arg-type]
        step = max(total / max(n, 1), 1.0)
        self.indices = [int(i * step) for i in range(min(n, total))]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


def _base_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None, list[str]]:
    d = cfg.data
    if d.dataset == "partshapes":
        from .partshapes import CLASSES, PartShapes

        train = PartShapes(d.train_split, size=d.train_size, image_size=d.image_size)
        val = PartShapes(d.val_split, size=d.val_size, image_size=d.image_size) if d.val_size > 0 else None
        return train, val, list(CLASSES)
    from torchvision.datasets import ImageFolder

    root = Path(d.root)

    def folder(split: str) -> ImageFolder | None:
        for candidate in (root / split / "images", root / split):
            if candidate.is_dir():
                return ImageFolder(str(candidate))
        return None

    train = folder(d.train_split)
    if train is None:
        raise ConfigError(f"no training images under {root / d.train_split} (expected class sub-folders)")
    val = folder(d.val_split)
    if val is not None and val.classes != train.classes:
        raise ConfigError(f"validation classes differ from training classes under {root}")
    return train, val, list(train.classes)


def build_datasets(cfg: TrainConfig) -> Datasets:
    import cast

    # superpixels are only computed for models that read them (CAST), not for the ViT baseline
    settings = superpixel_settings(cfg) if cfg.model.name in cast.MODEL_NAMES else None
    size = cfg.data.image_size
    train_base, val_base, classes = _base_datasets(cfg)
    if cfg.objective == "moco":
        views = moco_views(size, cfg.aug, settings)
    else:
        views = [supervised_train_view(size, cfg.aug, settings)]
    hirl = cfg.objective == "moco" and cfg.hirl.enabled
    train = ViewDataset(train_base, views, seed=cfg.run.seed, with_index=hirl)
    val = ViewDataset(val_base, [eval_view(size, settings)], seed=cfg.run.seed) if val_base is not None else None
    bank = None
    if cfg.objective == "moco" and val is not None:
        bank = ViewDataset(_Subset(train_base, cfg.moco.knn_train_size), [eval_view(size, settings)], seed=cfg.run.seed)
    cluster = ViewDataset(train_base, [eval_view(size, settings)], seed=cfg.run.seed, with_index=True) if hirl else None
    return Datasets(train, val, bank, classes, cluster)


class SkipSampler(Sampler[int]):
    """Yields the wrapped sampler's indices, skipping the first ``skip`` of the current epoch (a
    run resumed in the middle of an epoch sees exactly the rest of that epoch's order)."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.sampler)
        for i, idx in enumerate(it):
            if i >= self.skip:
                yield idx
        self.skip = 0

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def build_loader(ds: Dataset, batch_size: int, *, train: bool, seed: int, world_size: int, rank: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    sampler: Sampler[int]
    if world_size > 1:
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
    elif train:
        sampler = _EpochRandomSampler(ds, seed)
    else:
        sampler = SequentialSampler(ds)
    if train:
        sampler = SkipSampler(sampler)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=train,
                      pin_memory=pin_memory, persistent_workers=False)


class _EpochRandomSampler(RandomSampler):
    """A random permutation determined by (seed, epoch), like DistributedSampler's."""

    def __init__(self, ds: Dataset, seed: int) -> None:
        super().__init__(ds)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()  # type: ignore[arg-type]
