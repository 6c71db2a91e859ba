"""The one table of weights we know: published checkpoints, the bundled default, and the metadata
every loaded model carries (family, superpixel settings, input size, class names, origin)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .superpixels import SEEDS_DEIT, SEEDS_MOCO, SuperpixelSettings
from .taxonomy import Taxonomy

__all__ = [
    "ModelInfo", "PublishedWeights", "PUBLISHED", "HUB_REPO", "BUNDLED", "BUNDLED_BASELINE", "BUNDLED_CONCEPTS", "BUNDLED_FLAT",
    "BUNDLED_MODELS", "BASELINE_FOR", "bundled_dir", "bundled_env", "PACKAGE_DIR", "REPO_ROOT",
    "imagenet_class_names", "default_class_names", "IMAGENET_MEAN", "IMAGENET_STD",
]

HUB_REPO = "twke/CAST"
BUNDLED = "bundled"  # the default: an H-CAST cast_tiny (class and group heads, PartShapes' taxonomy; 24 epochs)
BUNDLED_FLAT = "bundled_flat"  # the flat cast_tiny (one head) trained on the same data (8 epochs)
BUNDLED_BASELINE = "bundled_vit"  # the ViT-Tiny trained beside the flat cast_tiny (same data, 8 epochs), for comparisons
BUNDLED_CONCEPTS = "bundled_hirl"  # a self-supervised cast_tiny trained with HIRL (concept hierarchy, no classifier)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the checkout, when the package runs from one
# name -> (folder, environment variable overriding it). The default model is package data (it ships
# with `pip install`); the others are the web app's and live in the checkout's assets/.
BUNDLED_MODELS: dict[str, tuple[Path, str]] = {
    BUNDLED: (PACKAGE_DIR / "assets" / "bundled", "CAST_BUNDLED_DIR"),
    BUNDLED_BASELINE: (REPO_ROOT / "assets" / "bundled_vit", "CAST_BUNDLED_VIT_DIR"),
    BUNDLED_CONCEPTS: (REPO_ROOT / "assets" / "bundled_hirl", "CAST_BUNDLED_HIRL_DIR"),
    BUNDLED_FLAT: (REPO_ROOT / "assets" / "bundled_flat", "CAST_BUNDLED_FLAT_DIR"),
}


@dataclass
class ModelInfo:
    """Metadata a loaded model carries as ``model.info``."""

    name: str  # registered architecture, e.g. "cast_small"
    family: str  # "deit" (supervised), "mocov3" (self-supervised) or "cast-explorer" (trained with train/)
    superpixels: SuperpixelSettings = SEEDS_DEIT
    input_size: int = 224  # images are resized (no crop) to input_size x input_size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] | None = None  # one per head output; None without a head
    source: str = ""  # where the weights came from (published name, path or Hub repo)
    weights: str | None = None  # published name when loaded from the table below
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (metrics, training run, ...)
    # Classes per level and their parents, for hierarchical heads (H-CAST) or to read a flat model's
    # fine classes up a tree; its fine level's names are ``class_names``.
    taxonomy: Taxonomy | None = None

    def to_dict(self, include_class_names: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["superpixels"] = self.superpixels.to_dict()
        d["taxonomy"] = None if self.taxonomy is None else self.taxonomy.to_dict()
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not include_class_names:
            d["class_names"] = None if self.class_names is None else f"<{len(self.class_names)} names>"

        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(d["name"]), family=str(d.get("family", "cast-explorer")),
            superpixels=SuperpixelSettings.from_dict(d.get("superpixels", {})),
            input_size=int(d.get("input_size", 224)),
            mean=tuple(d.get("mean", IMAGENET_MEAN)), std=tuple(d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            class_names=list(d["class_names"]) if d.get("class_names") is not None else None,
            source=str(d.get("source", "")), weights=d.get("weights"), extra=dict(d.get("extra", {})),
            taxonomy=Taxonomy.from_dict(d["taxonomy"]) if d.get("taxonomy") is not None else None,
        )

    def with_(self, **changes: Any) -> ModelInfo:
        return replace(self, **changes)


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint of the Hub repo ``twke/CAST`` (file layouts: ``docs/architecture.md``)."""

    name: str  # our name: "<architecture>.<training>"
    arch: str  # registered model name
    family: str  # "deit" or "mocov3"
    hub_file: str  # path inside the Hub repo
    num_classes: int  # head outputs (0 = backbone only)
    dataset: str
    result: str  # what the paper reports for it ("" where it gives no figure)
    size_mb: int | None = None  # the file's size where known (training files with optimizer state)
    hub_repo: str = HUB_REPO

    @property
    def size_hint(self) -> str:
        """How big the download is, for people choosing a model."""
        return f"{self.size_mb / 1000:.2f} GB download" if self.size_mb else PUBLISHED_SIZE_RANGE

    @property
    def pos_embed(self) -> str:
        return "learned" if self.family == "deit" else "sincos"

    @property
    def superpixels(self) -> SuperpixelSettings:
        return SEEDS_DEIT if self.family == "deit" else SEEDS_MOCO

    def model_kwargs(self) -> dict[str, Any]:
        return {"pos_embed": self.pos_embed, "num_classes": self.num_classes}

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.arch, family=self.family, superpixels=self.superpixels,
            class_names=imagenet_class_names() if self.num_classes == 1000 else None,
            source=f"hf://{self.hub_repo}/{self.hub_file}", weights=self.name,
        )


_MOCO = "snapshots/moco/{data}/{arch}/checkpoint_{epoch:04d}.pth.tar"
PUBLISHED_SIZE_RANGE = "0.4-0.9 GB download"  # what the published training files weigh
# Order matters: an architecture's first entry is timm's default tag (``cast_small`` = ``cast_small.deit_in1k``).
PUBLISHED: dict[str, PublishedWeights] = {
    w.name: w
    for w in [
        PublishedWeights("cast_small.deit_in1k", "cast_small", "deit",
                         "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth", 1000,
                         "ImageNet-1k (supervised)", "80.4 % top-1"),
        PublishedWeights("cast_small.mocov3_in1k", "cast_small", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="cast_small", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", "68.1 % linear probe"),
        PublishedWeights("cast_small_deep.deit_in1k", "cast_small_deep", "deit",
                         "snapshots/deit/imagenet1k/cast_small_deep/best_checkpoint.pth", 1000,
                         "ImageNet-1k (supervised)", "", size_mb=553),
        PublishedWeights("cast_small_deep.mocov3_in1k", "cast_small_deep", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="cast_small_deep", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", "69.1 % linear probe"),
        PublishedWeights("cast_base.mocov3_in1k", "cast_base", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="cast_base", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", "72.4 % linear probe"),
        PublishedWeights("cast_base_deep.mocov3_in1k", "cast_base_deep", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="cast_base_deep", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", ""),
        # MoCo-v3 conv-stem ViT baselines of the paper (the file name inside the folder is assumed
        # to follow the CAST files' pattern)
        PublishedWeights("vit_conv_small.mocov3_in1k", "vit_conv_small", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="vit_small", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", "67.9 % linear probe (ViT baseline)"),
        PublishedWeights("vit_conv_base.mocov3_in1k", "vit_conv_base", "mocov3",
                         _MOCO.format(data="imagenet1k", arch="vit_base", epoch=99), 0,
                         "ImageNet-1k (self-supervised)", "72.5 % linear probe (ViT baseline)"),
        PublishedWeights("cast_small.mocov3_coco_ep150", "cast_small", "mocov3",
                         _MOCO.format(data="coco", arch="cast_small", epoch=149), 0,
                         "COCO (self-supervised)", "segmentation pre-training"),
        PublishedWeights("cast_small.mocov3_coco_ep400", "cast_small", "mocov3",
                         _MOCO.format(data="coco", arch="cast_small", epoch=399), 0,
                         "COCO (self-supervised)", "38.4 mIoU on VOC before fine-tuning"),
    ]
}


# The ViT baseline each CAST is compared with (the paper's comparison: same training, patch tokens
# clustered by hierarchical k-means). Keys are model sources; models not listed have no baseline.
BASELINE_FOR: dict[str, str] = {
    BUNDLED: BUNDLED_BASELINE,
    BUNDLED_FLAT: BUNDLED_BASELINE,
    "cast_small.deit_in1k": "vit_conv_small.mocov3_in1k",
    "cast_small.mocov3_in1k": "vit_conv_small.mocov3_in1k",
    "cast_small_deep.deit_in1k": "vit_conv_small.mocov3_in1k",
    "cast_small_deep.mocov3_in1k": "vit_conv_small.mocov3_in1k",
    "cast_base.mocov3_in1k": "vit_conv_base.mocov3_in1k",
    "cast_base_deep.mocov3_in1k": "vit_conv_base.mocov3_in1k",
}


def bundled_dir(name: str = BUNDLED) -> Path:
    """Folder of a bundled model (:data:`BUNDLED_MODELS`): ``cast/assets/bundled`` (the default, an
    H-CAST cast_tiny, inside the package), and in a checkout ``assets/bundled_flat`` (the flat cast_tiny),
    ``assets/bundled_vit`` (the ViT baseline) and ``assets/bundled_hirl`` (cast_tiny with concepts); each
    overridable by its environment variable."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model called {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")
    folder, env = BUNDLED_MODELS[name]
    return Path(os.environ.get(env, folder))


def bundled_env(name: str) -> str:
    """The environment variable that points a bundled model elsewhere."""
    return BUNDLED_MODELS[name][1]


@lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    # descriptions look like "tench, Tinca tinca": keep the first, common name
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, from timm's ImageNet metadata."""
    return list(_imagenet_names())


def default_class_names(num_classes: int) -> list[str] | None:
    if num_classes <= 0:
        return None
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]
