"""Loading and saving CAST weights: published files, our own format, the bundled default.

Nothing here ever runs code from a file: pickles are read with ``torch.load(weights_only=True)``
(``argparse.Namespace`` is the one extra class allowed, for the published DeiT files) and our own
format is safetensors + JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsNotAvailableError,
)
from .models.cast import CAST, VARIANTS, checkpoint_filter_fn, infer_model_args
from .superpixels import SEEDS_DEIT, SEEDS_MOCO
from .weights import BUNDLED, BUNDLED_MODELS, PUBLISHED, ModelInfo, bundled_dir, default_class_names

__all__ = [
    "load_model", "safe_torch_load", "save_own_format", "load_own_format", "load_published_into",
    "build_model", "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT_NAME",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "cast-explorer"
FORMAT_VERSION = 1
_PUBLISHED_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt")
_INFO_FIELDS = set(ModelInfo.__dataclass_fields__)


# ---------------------------------------------------------------------------------------------
# Safe reading of pickled checkpoints
# ---------------------------------------------------------------------------------------------


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` that only accepts tensors, plain containers and ``argparse.Namespace``.

    Raises:
        UnsafeCheckpointError: the pickle references anything else (nothing from it was run).
        CheckpointFormatError: the file is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotAvailableError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notices from the restricted unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg and (_first_line_with(msg, "GLOBAL") or _pickle_wants_code(path)):
            detail = _first_line_with(msg, "GLOBAL") or "the pickle imports or calls objects"
            raise UnsafeCheckpointError(
                f"{path.name}: refused to load; the pickle asks for more than tensors and plain data "
                f"({detail}). Nothing from the file was executed."
            ) from None
        raise CheckpointFormatError(f"{path.name}: not a readable PyTorch checkpoint ({_first_line(msg)})") from None
    except Exception as e:  # corrupt zip, truncated file, random bytes, ...
        raise CheckpointFormatError(
            f"{path.name}: not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(str(e))})"
        ) from None


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_wants_code(path: Path) -> bool:
    """Whether a plain (non-zip) pickle references callables. Only parses opcodes; runs nothing."""
    import pickletools

    if zipfile.is_zipfile(path):
        return False  # zip checkpoints name their globals in torch's message already
    try:
        with open(path, "rb") as f:
            names = {op.name for op, _, _ in pickletools.genops(f)}  # the whole stream must parse
    except Exception:  # not a pickle at all
        return False
    return bool(names & _CODE_OPCODES)


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:300] if msg.strip() else "unknown error"


def _first_line_with(msg: str, needle: str) -> str | None:
    for line in msg.splitlines():
        if needle in line:
            return line.strip()[:300]
    return None


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_model(arch: str, **kwargs: Any) -> torch.nn.Module:
    """Create a registered architecture with random weights: a CAST variant (through timm's
    registry), a MoCo-v3 conv-stem ViT baseline (``vit_conv_small`` / ``vit_conv_base``) or a timm
    ViT baseline (``vit_*``)."""
    import timm

    from .baselines import VIT_VARIANTS, ConvStemViT

    if arch in VARIANTS:
        return timm.create_model(arch, **kwargs)
    if arch in VIT_VARIANTS:
        return ConvStemViT(**{**VIT_VARIANTS[arch], **kwargs})
    if arch.startswith("vit_") and timm.is_model(arch):
        model = timm.create_model(arch, **kwargs)
        model.model_args = dict(kwargs)  # type: ignore[attr-defined]
        return model
    raise WeightsNotAvailableError(f"unknown architecture {arch!r}; known: {', '.join(VARIANTS)}, "
                                   f"{', '.join(VIT_VARIANTS)} and timm vit_* baselines")


def _arch_for(args: dict[str, Any]) -> str | None:
    for name, v in VARIANTS.items():
        if v["embed_dim"] == args["embed_dim"] and tuple(v["depths"]) == tuple(args["depths"]):
            return name
    return None


def _finish(model: CAST, info: ModelInfo, device: str | torch.device | None) -> CAST:
    model.info = info  # type: ignore[attr-defined]
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    info = {k: v for k, v in overrides.items() if k in _INFO_FIELDS}
    model = {k: v for k, v in overrides.items() if k not in _INFO_FIELDS}
    return info, model


# ---------------------------------------------------------------------------------------------
# Hub access
# ---------------------------------------------------------------------------------------------


def _download(repo_id: str, filename: str, revision: str | None, cache_dir: Any = None, **kwargs: Any) -> str:
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, **kwargs)
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise WeightsNotAvailableError(
            f"{repo_id}/{filename} is not in the local Hub cache and {why}. Download it once with "
            f"network access (e.g. `hf download {repo_id} {filename}`), or use the bundled model "
            f"(`cast.load_model('bundled')`)."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise WeightsNotAvailableError(f"{repo_id}/{filename} (revision {revision or 'main'}): {_first_line(str(e))}") from None
    except HfHubHTTPError as e:
        raise WeightsNotAvailableError(f"download of {repo_id}/{filename} failed: {_first_line(str(e))}") from None


# ---------------------------------------------------------------------------------------------
# Published files
# ---------------------------------------------------------------------------------------------


def cast_for_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint",
                        model_overrides: dict[str, Any] | None = None) -> tuple[CAST, dict[str, Any]]:
    """Build (random weights) the registered CAST variant that a converted state dict fits, and
    return it with the architecture read from the keys (width, depths, family, input size, head)."""
    try:
        args = infer_model_args(sd)
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointFormatError(f"{name}: not a CAST checkpoint (no {e} entry)") from None
    arch = _arch_for(args)
    if arch is None:
        raise CheckpointMismatchError(
            f"{name}: width {args['embed_dim']} with depths {args['depths']} is none of the "
            f"registered variants ({', '.join(VARIANTS)})"
        )
    kwargs = {"pos_embed": args["pos_embed"], "num_classes": args["num_classes"], "img_size": args["img_size"],
              **(model_overrides or {})}
    return build_model(arch, **kwargs), {**args, "arch": arch}  # type: ignore[return-value]


def _load_published_file(path: str | os.PathLike[str], source: str, model_overrides: dict[str, Any],
                         base_info: ModelInfo | None = None) -> CAST:
    obj = safe_torch_load(path)
    try:
        sd = checkpoint_filter_fn(obj)
    except CheckpointMismatchError as e:
        raise CheckpointFormatError(f"{Path(path).name}: {e}") from None
    if sd and not any(k.startswith("pool1.") for k in sd) and "cls_token" in sd:
        return _load_vit_file(sd, path, source, model_overrides, base_info)
    model, args = cast_for_state_dict(sd, Path(path).name, model_overrides)
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    family = "mocov3" if args["pos_embed"] == "sincos" else "deit"
    info = base_info or ModelInfo(
        name=args["arch"], family=family, superpixels=SEEDS_MOCO if family == "mocov3" else SEEDS_DEIT,
        input_size=args["img_size"], class_names=default_class_names(model.num_classes), source=source,
    )
    return _finish(model, info, None)


def _load_vit_file(sd: dict[str, torch.Tensor], path: Any, source: str, model_overrides: dict[str, Any],
                   base_info: ModelInfo | None) -> torch.nn.Module:
    """A MoCo-v3 conv-stem ViT baseline file (no graph pooling keys)."""
    from .baselines import VIT_VARIANTS

    width = int(sd["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    arch = next((n for n, v in VIT_VARIANTS.items() if v["embed_dim"] == width and v["depth"] == depth), None)
    if arch is None or "patch_embed.proj.12.weight" not in sd:
        raise CheckpointMismatchError(f"{Path(path).name}: neither a CAST nor a conv-stem ViT checkpoint")
    grid = sd["pos_embed"].shape[1] - 1
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    extra = {k: v for k, v in model_overrides.items() if k not in ("pos_embed", "num_classes", "img_size")}
    model = build_model(arch, img_size=int(round(math.sqrt(grid))) * 16, num_classes=num_classes, **extra)
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(sd)) + sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if bad:
        raise CheckpointMismatchError(f"{Path(path).name} does not fit {arch}: {bad[:8]}")
    model.load_state_dict(sd, strict=True)
    info = base_info or ModelInfo(name=arch, family="mocov3", superpixels=SEEDS_MOCO, source=source,
                                  class_names=default_class_names(num_classes))
    return _finish(model, info, None)  # type: ignore[arg-type]


def load_published_into(model: CAST, variant: str, revision: str | None = None) -> CAST:
    """Fill a freshly built ``variant`` with the published weights that fit its head and family
    (used by ``timm.create_model(..., pretrained=True)``)."""
    candidates = [w for w in PUBLISHED.values() if w.arch == variant and w.pos_embed == model.pos_embed_type
                  and w.num_classes == model.num_classes]
    if not candidates:
        raise WeightsNotAvailableError(
            f"no published weights for {variant} with pos_embed={model.pos_embed_type!r} and "
            f"num_classes={model.num_classes}; published: {', '.join(PUBLISHED)}"
        )
    w = candidates[0]
    obj = safe_torch_load(_download(w.hub_repo, w.hub_file, revision))
    model.load_state_dict(checkpoint_filter_fn(obj, model), strict=True)
    model.info = w.info()  # type: ignore[attr-defined]
    return model


# ---------------------------------------------------------------------------------------------
# Our own format: config.json + model.safetensors (huggingface_hub ModelHubMixin layout)
# ---------------------------------------------------------------------------------------------


def own_format_config(model: torch.nn.Module) -> dict[str, Any]:
    info: ModelInfo = getattr(model, "info", None) or default_info(model)  # type: ignore[arg-type]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": info.name,
        "model_args": dict(model.model_args),  # type: ignore[arg-type]
        "info": info.to_dict(),
    }


def default_info(model: CAST, source: str = "") -> ModelInfo:
    """Metadata for a model that was built rather than loaded."""
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or _arch_for(model.model_args) or "cast"
    return ModelInfo(
        name=arch, family="cast-explorer" if model.pos_embed_type == "sincos" else "deit",
        superpixels=SEEDS_MOCO if model.pos_embed_type == "sincos" else SEEDS_DEIT,
        input_size=model.img_size, class_names=default_class_names(model.num_classes), source=source,
    )


def save_own_format(model: torch.nn.Module, directory: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights at that precision, halving the
    file; loading casts them back to the model's float32 parameters.
    """
    import copy

    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    to_save = model
    if dtype is not None:
        to_save = copy.deepcopy(model)
        for t in list(to_save.parameters()) + list(to_save.buffers()):
            if t.is_floating_point():
                t.data = t.data.to(dtype)
    save_model(to_save, str(directory / WEIGHTS_NAME))
    config = own_format_config(model)
    config["weights_dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _read_config(path: str) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path}: unreadable config.json ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointFormatError(f"{path}: not a {FORMAT_NAME} config (missing \"format\": \"{FORMAT_NAME}\")")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{path}: format version {config['format_version']} is newer than this library reads ({FORMAT_VERSION})"
        )
    return config


def load_own_format(model_id: str | os.PathLike[str], *, revision: str | None = None, cache_dir: Any = None,
                    force_download: bool = False, local_files_only: bool = False, token: Any = None,
                    overrides: dict[str, Any] | None = None, source: str | None = None) -> CAST:
    """Load a folder or Hub repo holding ``config.json`` + ``model.safetensors``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    info_over, model_over = _split_overrides(dict(overrides or {}))
    model_id = str(model_id)
    if os.path.isdir(model_id):
        config_file, weights_file = os.path.join(model_id, CONFIG_NAME), os.path.join(model_id, WEIGHTS_NAME)
        for f in (config_file, weights_file):
            if not os.path.isfile(f):
                raise WeightsNotAvailableError(f"{model_id}: no {os.path.basename(f)} (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
    else:
        kw = dict(force_download=force_download, local_files_only=local_files_only, token=token)
        config_file = _download(model_id, CONFIG_NAME, revision, cache_dir, **kw)
        weights_file = _download(model_id, WEIGHTS_NAME, revision, cache_dir, **kw)
    config = _read_config(config_file)
    arch = str(config.get("architecture", ""))
    model_args = dict(config.get("model_args", {}))
    model_args.update(model_over)
    try:
        model = build_model(arch, **model_args)
    except TypeError as e:
        raise CheckpointFormatError(f"{config_file}: bad model_args ({e})") from None
    try:
        missing, unexpected = load_safetensors(model, weights_file, strict=False)
    except SafetensorError as e:
        raise CheckpointFormatError(f"{weights_file}: unreadable safetensors file ({e})") from None
    except RuntimeError as e:  # size mismatch
        raise CheckpointMismatchError(f"{weights_file} does not fit {arch}: {_first_line(str(e))}") from None
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights_file} does not fit {arch}: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    info = ModelInfo.from_dict({**config.get("info", {}), "name": arch})
    info = info.with_(source=source or model_id, **info_over)
    if info.class_names is not None and len(info.class_names) != model.num_classes:
        raise CheckpointFormatError(f"{config_file}: {len(info.class_names)} class names for {model.num_classes} outputs")
    return _finish(model, info, None)


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------


def load_model(source: str | os.PathLike[str] = BUNDLED, *, revision: str | None = None, cache_dir: Any = None,
               device: str | torch.device | None = None, **overrides: Any) -> CAST:
    """Load an eval-mode CAST carrying its metadata as ``model.info`` (:class:`~cast.weights.ModelInfo`).

    Args:
        source: one of
            - a published name (``cast.PUBLISHED``, e.g. ``"cast_small.deit_in1k"``), downloaded from
              the Hub repo ``twke/CAST`` through huggingface_hub's cache (``HF_HUB_OFFLINE`` honoured);
            - ``"bundled"``: the default model shipped in ``assets/bundled``; ``"bundled_vit"``: its
              ViT baseline in ``assets/bundled_vit`` (returns the ViT, not a CAST); ``"bundled_hirl"``:
              a self-supervised cast_tiny with a concept hierarchy (``assets/bundled_hirl``);
            - a local published-format file (``.pth``, ``.pth.tar``);
            - a folder or Hub repo id with ``config.json`` + ``model.safetensors`` (our format).
        revision: Hub revision (branch, tag or commit) to pin.
        cache_dir: Hub cache folder (default: huggingface_hub's, ``HF_HUB_CACHE``).
        device: where to put the model (default CPU).
        overrides: ``ModelInfo`` fields (``superpixels``, ``class_names``, ``input_size``, ...)
            replace the stored metadata; anything else is passed to the model constructor.

    Raises:
        WeightsNotAvailableError, UnsafeCheckpointError, CheckpointFormatError, CheckpointMismatchError.
    """
    info_over, model_over = _split_overrides(overrides)
    src = str(source)
    if src in BUNDLED_MODELS:
        folder = bundled_dir(src)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise WeightsNotAvailableError(
                f"the bundled model {src!r} is not installed ({folder} has no {CONFIG_NAME} + {WEIGHTS_NAME}). "
                f"Use a published model instead, one of: {', '.join(PUBLISHED)}"
            )
        model = load_own_format(folder, overrides=overrides, source=src)
    elif src in PUBLISHED:
        w = PUBLISHED[src]
        path = _download(w.hub_repo, w.hub_file, revision, cache_dir)
        model = _load_published_file(path, src, {**w.model_kwargs(), **model_over}, w.info())
        model.info = model.info.with_(**info_over)  # type: ignore[attr-defined]
    elif os.path.isfile(src):
        if src.endswith(".safetensors"):
            model = load_own_format(os.path.dirname(os.path.abspath(src)), overrides=overrides)
        else:
            model = _load_published_file(src, src, model_over)
            model.info = model.info.with_(**info_over)  # type: ignore[attr-defined]
    elif os.path.isdir(src):
        model = load_own_format(src, overrides=overrides)
    elif src.count("/") == 1 and not src.endswith(_PUBLISHED_SUFFIXES) and not os.path.exists(src):
        model = load_own_format(src, revision=revision, cache_dir=cache_dir, overrides=overrides, source=f"hf://{src}")
    else:
        raise WeightsNotAvailableError(
            f"unknown model source {src!r}: not a published name ({', '.join(PUBLISHED)}), "
            f"'{BUNDLED}', an existing file or folder, or a Hub repo id"
        )
    return _finish(model, model.info, device)  # type: ignore[attr-defined]
