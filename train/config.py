"""Training configuration: commented dataclass defaults <- YAML file <- ``--set key=value``.

Unknown keys are errors at every layer; the resolved config is written to every run folder
(``config.yaml``) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "ConfigError", "load_config", "apply_overrides", "config_to_dict", "config_from_dict"]


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    name: str = "cast_tiny"  # registered name: cast_* (cast.MODEL_NAMES) or a timm ViT (the baseline)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model (drop_path_rate, ...)
    # start from these weights (a checkpoint file, published name or own-format folder, cast.load_model's
    # sources): every backbone tensor that fits is taken, positions interpolated to the input size, heads of
    # another shape (a flat CAST's head for H-CAST's) left freshly initialised
    init: str = ""


@dataclass
class SuperpixelConfig:
    method: str = "seeds"  # "seeds" (published models) or "slic"
    n_segments: int = 196  # requested superpixels per view
    params: dict[str, Any] = field(default_factory=lambda: {"histogram_bins": 5, "num_iterations": 15})


@dataclass
class DataConfig:
    dataset: str = "partshapes"  # "partshapes" (synthetic, built in) or "folder" (ImageFolder layout)
    root: str = ""  # folder datasets: holds train/ and val/ (or images/ for an exported split)
    train_split: str = "train"  # sub-folder (folder) or split name (partshapes)
    val_split: str = "val"
    train_size: int = 20000  # partshapes: images per epoch (rendered on the fly)
    val_size: int = 1000  # partshapes: held-out images
    image_size: int = 224  # model input (square)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    num_workers: int = 2  # DataLoader workers per process (superpixels are computed there)


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.5
    color_jitter: float = 0.4  # supervised recipe (ignored when auto_augment is set, as in timm)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment (timm string); None to disable
    re_prob: float = 0.0  # random erasing (applied after superpixels, on the normalised tensor)
    mixup: float = 0.8  # mixup alpha (0 disables)
    cutmix: float = 1.0  # cutmix alpha (0 disables); superpixels are cut and pasted with the pixels
    mix_prob: float = 1.0
    label_smoothing: float = 0.1
    # MoCo-v3 views
    moco_scale: tuple[float, float] = (0.08, 1.0)
    moco_blur: float = 1.0  # gaussian blur probability of view 1 (view 2 uses 0.1)
    moco_solarize: float = 0.2  # solarisation probability of view 2


@dataclass
class OptimConfig:
    opt: str = "adamw"  # any timm optimizer name
    base_lr: float = 5e-4  # learning rate at batch `lr_batch`; scaled linearly with the global batch
    lr_batch: int = 512  # DeiT: 512, MoCo-v3: 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None  # max gradient norm (None = no clipping)
    accum_steps: int = 1  # gradient accumulation: optimizer steps every `accum_steps` batches


@dataclass
class ScheduleConfig:
    epochs: int = 300
    warmup_epochs: int = 5
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6


@dataclass
class MocoConfig:
    dim: int = 256  # output of the projector / predictor
    mlp_dim: int = 4096  # hidden width of projector and predictor MLPs
    temperature: float = 0.2
    momentum: float = 0.99  # initial momentum of the key encoder, raised to 1 by a cosine schedule
    knn_k: int = 20  # k-NN validation: neighbours
    knn_t: float = 0.07  # k-NN validation: temperature of the vote weights
    knn_train_size: int = 5000  # k-NN validation: memory bank size (train images)


@dataclass
class HirlConfig:
    enabled: bool = False  # add HIRL's semantic-path objective to MoCo-v3 (objective: moco)
    num_prototypes: list[int] = field(default_factory=lambda: [64, 16, 4])  # prototypes per level, fine to coarse
    warmup_epochs: int = 1  # plain MoCo-v3 epochs before the first clustering
    recluster_every: int = 1  # epochs between re-clusterings of the training set's embeddings
    weight: float = 1.0  # weight of the path loss beside the MoCo-v3 loss
    temperature: float = 0.2  # cosine / temperature inside each level's sigmoid
    num_negatives: int = 16  # negative paths sampled per image (shared levels are not counted against them)
    hidden: int = 0  # hidden width of the per-level heads (0 = the backbone width)
    representatives: int = 4  # training images kept per prototype (exported as thumbnails)


@dataclass
class TaxonomyConfig:
    # classes per level for hierarchical heads (hcast_* models; a ViT baseline gets per-level heads too):
    # "" (flat), "partshapes" (10 classes -> 3 groups), "partshapes3" (-> 3 groups -> 2 kinds), or a
    # taxonomy JSON file (cast.taxonomy) whose finest level is the dataset's classes, in its order
    file: str = ""
    tree_kl_weight: float = 0.5  # weight of the tree-path KL term beside the per-level cross-entropies


@dataclass
class RunConfig:
    out_dir: str = "runs"  # run folders are created inside
    name: str = ""  # run folder name (default: config file stem)
    seed: int = 0
    batch_size: int = 128  # per process
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    amp: str = "auto"  # "auto" (bf16 on CUDA if supported, else fp16 on CUDA, none on CPU), "bf16", "fp16", "none"
    channels_last: bool = True  # on CUDA
    grad_checkpointing: str = "auto"  # recompute block activations in backward: "always", "never", "auto" (cast_base* on CUDA)
    threads: int = 0  # torch CPU threads per process (0 = torch's default)
    ema: bool = False  # keep an exponential moving average of the weights
    ema_decay: float = 0.9998
    log_every: int = 10  # steps between metric lines
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = end of epoch only)
    max_steps: int = 0  # stop after N optimizer steps (0 = run all epochs); for smoke tests
    eval: bool = True  # validate every epoch


@dataclass
class TrainConfig:
    objective: str = "supervised"  # "supervised" (DeiT-style) or "moco" (MoCo-v3)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    hirl: HirlConfig = field(default_factory=HirlConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        if self.objective not in ("supervised", "moco"):
            raise ConfigError(f"objective must be 'supervised' or 'moco', got {self.objective!r}")
        if self.data.dataset not in ("partshapes", "folder"):
            raise ConfigError(f"data.dataset must be 'partshapes' or 'folder', got {self.data.dataset!r}")
        if self.data.dataset == "folder" and not self.data.root:
            raise ConfigError("data.root is required for folder datasets")
        if self.run.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"run.amp must be auto, bf16, fp16 or none, got {self.run.amp!r}")
        if self.run.grad_checkpointing not in ("auto", "always", "never"):
            raise ConfigError(f"run.grad_checkpointing must be auto, always or never, got {self.run.grad_checkpointing!r}")
        if self.optim.accum_steps < 1 or self.run.batch_size < 1 or self.schedule.epochs < 1:
            raise ConfigError("optim.accum_steps, run.batch_size and schedule.epochs must be >= 1")
        if self.hirl.enabled:
            h = self.hirl
            if self.objective != "moco":
                raise ConfigError("hirl.enabled needs objective: moco (HIRL is added to a self-supervised objective)")
            if not h.num_prototypes or any(b >= a for a, b in zip(h.num_prototypes, h.num_prototypes[1:])) or min(h.num_prototypes) < 1:
                raise ConfigError(f"hirl.num_prototypes must decrease from fine to coarse, got {h.num_prototypes}")
            if h.warmup_epochs < 0 or h.recluster_every < 1 or h.num_negatives < 1 or h.representatives < 0:
                raise ConfigError("hirl: warmup_epochs >= 0, recluster_every >= 1, num_negatives >= 1, representatives >= 0")
        if self.taxonomy.file and self.objective != "supervised":
            raise ConfigError("taxonomy.file needs objective: supervised (per-level heads are trained on labels)")
        if self.model.name.startswith("hcast") and not self.taxonomy.file:
            raise ConfigError(f"{self.model.name} has one head per taxonomy level: set taxonomy.file")
        if self.taxonomy.tree_kl_weight < 0:
            raise ConfigError("taxonomy.tree_kl_weight must be >= 0")
        if self.data.superpixels.method not in ("seeds", "slic"):
            raise ConfigError(f"data.superpixels.method must be seeds or slic, got {self.data.superpixels.method!r}")
        return self


# ---------------------------------------------------------------------------------------------


def _merge(obj: Any, updates: dict[str, Any], path: str) -> Any:
    """Return a copy of dataclass ``obj`` with ``updates`` applied; unknown keys raise."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(updates).__name__}")
    known = {f.name: f for f in fields(obj)}
    changes = {}
    for key, value in updates.items():
        where = f"{path}.{key}" if path else key
        if key not in known:
            raise ConfigError(f"unknown config key {where!r}; known here: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, where)
        else:
            changes[key] = _coerce(current, value, where)
    return dataclasses.replace(obj, **changes)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, float) and isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    if current is not None and value is not None and isinstance(current, (int, float, str)) and not isinstance(value, type(current)):
        raise ConfigError(f"{where}: expected {type(current).__name__}, got {value!r}")
    return value


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key.sub=value`` strings (values parsed as YAML: numbers, lists, true/false, null)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse {raw!r} ({e})") from None
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        cfg = _merge(cfg, nested, "")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, validated."""
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from None
        cfg = _merge(cfg, data, "")
        if not cfg.run.name:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=path.stem))
    cfg = apply_overrides(cfg, overrides or [])
    return cfg.validate()


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(asdict(cfg))


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    return _merge(TrainConfig(), d, "").validate()
