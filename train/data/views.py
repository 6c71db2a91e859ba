"""Augmented views with their own superpixels, built inside DataLoader workers.

A view is ``pre`` (PIL -> augmented PIL: crops, flips, colour), superpixels computed on that
augmented uint8 image (what the model sees, before normalisation), then ``post`` (PIL -> normalised
tensor). Randomness is seeded per (run seed, epoch, sample index), so a sample gets the same
augmentation whichever worker or process renders it, and a resumed run sees the same data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms as T

from cast.superpixels import SuperpixelSettings
from cast.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SuperpixelView", "ViewDataset", "supervised_train_view", "eval_view", "moco_views", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (run seed, epoch, sample index), stable across processes."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class SuperpixelView:
    """PIL image -> ``(image [3, S, S] float normalised, superpixels [S, S] long)``."""

    def __init__(self, pre: Callable[[Image.Image], Image.Image], post: Callable[[Image.Image], torch.Tensor],
                 superpixels: SuperpixelSettings | None) -> None:
        self.pre, self.post, self.superpixels = pre, post, superpixels

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.pre(img.convert("RGB"))
        if self.superpixels is None:  # models without superpixel input (the ViT baseline)
            return self.post(aug), torch.zeros(aug.size[::-1], dtype=torch.long)
        sp = self.superpixels(np.asarray(aug))
        return self.post(aug), torch.from_numpy(sp)


class ViewDataset(Dataset):
    """Wraps a dataset of ``(PIL image, label, ...)`` into ``(x1, sp1[, x2, sp2, ...], label)``."""

    def __init__(self, base: Dataset, views: Sequence[SuperpixelView], seed: int = 0, with_index: bool = False) -> None:
        self.base, self.views, self.seed = base, list(views), seed
        self.with_index = with_index  # append the dataset index (HIRL looks up each image's concept path)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        s = sample_seed(self.seed, self.epoch, index)
        # timm / torchvision transforms draw from these three generators
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        item = self.base[index]
        img, label = item[0], item[1]
        out: list[Any] = []
        for view in self.views:
            out.extend(view(img))
        out.append(int(label))
        if self.with_index:
            out.append(int(index))
        return tuple(out)


def _normalise() -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def supervised_train_view(size: int, aug: Any, superpixels: SuperpixelSettings | None) -> SuperpixelView:
    """DeiT recipe through timm's transform factory: RandomResizedCrop, flip, RandAugment; random
    erasing (if any) after the superpixels, on the normalised tensor."""
    from timm.data import create_transform

    primary, secondary, final = create_transform(
        size, is_training=True, scale=tuple(aug.scale), hflip=aug.hflip, color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment, re_prob=aug.re_prob, interpolation="bicubic", separate=True,
    )
    return SuperpixelView(T.Compose([primary, secondary]), final, superpixels)


def eval_view(size: int, superpixels: SuperpixelSettings | None) -> SuperpixelView:
    """Whole image resized to ``size`` x ``size`` (no crop), as the Predictor does."""
    return SuperpixelView(T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), _normalise(), superpixels)


class _Solarize:
    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img)


class _Blur:
    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def moco_views(size: int, aug: Any, superpixels: SuperpixelSettings | None) -> list[SuperpixelView]:
    """The two asymmetric MoCo-v3 views (BYOL augmentations), each with its own superpixels."""
    sigma_scale = size / 224.0  # blur radius relative to the image size of the recipe

    def pre(blur_p: float, solarize_p: float) -> Callable[[Image.Image], Image.Image]:
        return T.Compose([
            T.RandomResizedCrop(size, scale=tuple(aug.moco_scale), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([_Blur((0.1 * sigma_scale, 2.0 * sigma_scale))], p=blur_p),
            T.RandomApply([_Solarize()], p=solarize_p),
            T.RandomHorizontalFlip(),
        ])

    return [SuperpixelView(pre(aug.moco_blur, 0.0), _normalise(), superpixels),
            SuperpixelView(pre(0.1, aug.moco_solarize), _normalise(), superpixels)]
