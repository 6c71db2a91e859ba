"""Loading weights from every source we know, safely: published checkpoints, our own format, the
bundled models. :func:`load_model` is the one entry point; :func:`resolve_source` the one place
that decides what a source string names.

Nothing here ever runs code from a file: pickles are read with ``torch.load(weights_only=True)``
(``argparse.Namespace`` is the one extra class allowed, for the published DeiT files) and our own
format is safetensors + JSON (:mod:`cast.models.hub_mixin`).
"""

from __future__ import annotations

import argparse
import os
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch

from . import hub
from .concepts import CONCEPTS_CONFIG, CONCEPTS_WEIGHTS, THUMBNAILS_DIR, ConceptHierarchy, load_concepts
from .errors import CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError, WeightsNotAvailableError
from .models import CAST, HCAST_VARIANTS, VARIANTS, VIT_VARIANTS, checkpoint_filter_fn, infer_model_args, level_classes_of, variant_of
from .models.convert import check_fits
from .models.hub_mixin import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    WEIGHTS_PATTERNS,
    check_taxonomy,
    has_weights,
    info_from_config,
    load_weights,
    read_config,
    split_overrides,
    write_own_format,
)
from .models.vit_conv import checkpoint_filter_fn as vit_filter_fn
from .superpixels import SEEDS_DEIT, SEEDS_MOCO
from .taxonomy import Taxonomy, load_taxonomy
from .weights import BUNDLED, BUNDLED_MODELS, PUBLISHED, ModelInfo, bundled_dir, bundled_env, default_class_names

__all__ = [
    "load_model", "resolve_source", "Source", "load_concepts_of", "safe_torch_load", "save_own_format",
    "load_own_format", "build_model", "attach_taxonomy", "cast_for_state_dict", "convert_official_state_dict",
]

PUBLISHED_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt")
save_own_format = write_own_format  # the writer lives with the models' save_pretrained


# ---------------------------------------------------------------------------------------------
# Safe reading of pickled checkpoints
# ---------------------------------------------------------------------------------------------

_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` that only accepts tensors, plain containers and ``argparse.Namespace``.

    Raises:
        UnsafeCheckpointError: the pickle references anything else (nothing from it was run).
        CheckpointFormatError: the file is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotAvailableError(f"checkpoint file not found: {path}", short="checkpoint file not found")
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


def _pickle_wants_code(path: Path) -> bool:
    """Whether a plain (non-zip) pickle references callables. Only parses opcodes; runs nothing."""
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
# Sources
# ---------------------------------------------------------------------------------------------

SourceKind = Literal["bundled", "published", "published_file", "own_file", "folder", "hub_repo"]


@dataclass(frozen=True)
class Source:
    """What a model source names (see :func:`load_model` for the forms)."""

    kind: SourceKind
    name: str  # the source as given
    path: Path | None = None  # the folder or file, for local sources

    @property
    def own_format_folder(self) -> Path | None:
        """The local folder of an own-format model (None for Hub repos and published files)."""
        if self.kind in ("bundled", "folder"):
            return self.path
        if self.kind == "own_file":
            return self.path.parent if self.path else None
        return None


def resolve_source(source: str | os.PathLike[str]) -> Source:
    """Classify a model source once, for loading and for finding what sits beside the weights.

    Raises:
        WeightsNotAvailableError: none of the known forms.
    """
    src = str(source)
    if src in BUNDLED_MODELS:
        return Source("bundled", src, bundled_dir(src))
    if src in PUBLISHED:
        return Source("published", src)
    if os.path.isfile(src):
        kind: SourceKind = "own_file" if src.endswith(".safetensors") else "published_file"
        return Source(kind, src, Path(src).resolve())
    if os.path.isdir(src):
        return Source("folder", src, Path(src))
    if src.count("/") == 1 and not src.endswith(PUBLISHED_SUFFIXES) and not os.path.exists(src):
        return Source("hub_repo", src)
    raise WeightsNotAvailableError(
        f"unknown model source {src!r}: not a published name ({', '.join(PUBLISHED)}), "
        f"'{BUNDLED}', an existing file or folder, or a Hub repo id",
        short="unknown model source",
    )


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_model(arch: str, **kwargs: Any) -> torch.nn.Module:
    """Create a registered architecture with random weights through timm's registry: a CAST variant,
    a MoCo-v3 conv-stem ViT (``vit_conv_small`` / ``vit_conv_base``) or a timm ViT baseline (``vit_*``)."""
    if arch in VARIANTS or arch in HCAST_VARIANTS or arch in VIT_VARIANTS:
        return timm.create_model(arch, **kwargs)
    if arch.startswith("vit_") and timm.is_model(arch):
        model = timm.create_model(arch, **kwargs)
        model.model_args = dict(kwargs)  # type: ignore[attr-defined]
        return model
    raise WeightsNotAvailableError(f"unknown architecture {arch!r}; known: {', '.join(VARIANTS)}, {', '.join(HCAST_VARIANTS)}, "
                                   f"{', '.join(VIT_VARIANTS)} and timm vit_* baselines", short="unknown architecture")


def cast_for_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint",
                        model_overrides: dict[str, Any] | None = None) -> tuple[CAST, dict[str, Any]]:
    """Build (random weights) the registered CAST variant that a converted state dict fits, and
    return it with the architecture read from the keys (width, depths, family, input size, head; with
    H-CAST's ``family_head``, the hierarchical variant and its classes per level)."""
    try:
        args = infer_model_args(sd)
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointFormatError(f"{name}: not a CAST checkpoint (no {e} entry)") from None
    arch = variant_of(args)
    if arch is None:
        raise CheckpointMismatchError(
            f"{name}: width {args['embed_dim']} with depths {args['depths']} is none of the "
            f"registered variants ({', '.join(VARIANTS)})"
        )
    kwargs = {"pos_embed": args["pos_embed"], "num_classes": args["num_classes"], "img_size": args["img_size"],
              **(model_overrides or {})}
    levels = level_classes_of(sd)
    if levels is not None:  # an H-CAST file: one head per taxonomy level
        if len(levels) not in (2, 3) or f"h{arch}" not in HCAST_VARIANTS:
            raise CheckpointMismatchError(
                f"{name}: hierarchical heads ({len(levels)} levels) on {arch}: H-CAST is registered for 2 or 3 levels on "
                f"{', '.join(v.removeprefix('h') for v in HCAST_VARIANTS)} ({', '.join(HCAST_VARIANTS)})")
        arch, kwargs["level_classes"] = f"h{arch}", levels
        args["level_classes"] = levels
    return build_model(arch, **kwargs), {**args, "arch": arch}  # type: ignore[return-value]


def convert_official_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """State dict for :class:`CAST` from whatever ``torch.load`` returned for a published file
    (MoCo-v3 dict, DeiT dict or bare state dict). The model it fits is rebuilt from the keys, and
    any key that does not fit raises :class:`CheckpointMismatchError` naming it."""
    sd = checkpoint_filter_fn(obj)
    try:
        model, _ = cast_for_state_dict(sd, "state dict")
    except CheckpointFormatError as e:
        raise CheckpointMismatchError(str(e)) from None
    return checkpoint_filter_fn(sd, model)


# ---------------------------------------------------------------------------------------------
# Published files
# ---------------------------------------------------------------------------------------------


def _load_published_file(path: str | os.PathLike[str], source: str, model_overrides: dict[str, Any],
                         base_info: ModelInfo | None = None) -> torch.nn.Module:
    """A CAST or conv-stem ViT file in the published layout, checked key by key."""
    obj = safe_torch_load(path)
    try:
        sd = checkpoint_filter_fn(obj)
    except CheckpointMismatchError as e:
        raise CheckpointFormatError(f"{Path(path).name}: {e}") from None
    if sd and not any(k.startswith("pool1.") for k in sd) and "cls_token" in sd:
        return _load_vit_file(sd, path, source, model_overrides, base_info)
    model, args = cast_for_state_dict(sd, Path(path).name, model_overrides)
    if "level_classes" in args:  # H-CAST: every key must fit, heads included
        try:
            check_fits(sd, model)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{Path(path).name}: {e}") from None
        model.load_state_dict(sd, strict=True)
    else:
        model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    family = "mocov3" if args["pos_embed"] == "sincos" else "deit"
    model.info = base_info or ModelInfo(
        name=args["arch"], family=family, superpixels=SEEDS_MOCO if family == "mocov3" else SEEDS_DEIT,
        input_size=args["img_size"], class_names=default_class_names(model.num_classes), source=source,
    )
    return model


def _load_vit_file(sd: dict[str, torch.Tensor], path: Any, source: str, model_overrides: dict[str, Any],
                   base_info: ModelInfo | None) -> torch.nn.Module:
    """A MoCo-v3 conv-stem ViT baseline file (no graph pooling keys)."""
    width = int(sd["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    arch = next((n for n, v in VIT_VARIANTS.items() if v["embed_dim"] == width and v["depth"] == depth), None)
    if arch is None or "patch_embed.proj.12.weight" not in sd:
        raise CheckpointMismatchError(f"{Path(path).name}: neither a CAST nor a conv-stem ViT checkpoint")
    grid = sd["pos_embed"].shape[1] - 1
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    extra = {k: v for k, v in model_overrides.items() if k not in ("pos_embed", "num_classes", "img_size")}
    model = build_model(arch, img_size=round(grid ** 0.5) * 16, num_classes=num_classes, **extra)
    try:
        model.load_state_dict(vit_filter_fn(sd, model), strict=True)  # type: ignore[arg-type]
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{Path(path).name} does not fit {arch}: {e}") from None
    model.info = base_info or ModelInfo(name=arch, family="mocov3", superpixels=SEEDS_MOCO, source=source,  # type: ignore[assignment]
                                        class_names=default_class_names(num_classes))
    return model


# ---------------------------------------------------------------------------------------------
# Our own format
# ---------------------------------------------------------------------------------------------


def load_own_format(model_id: str | os.PathLike[str], *, revision: str | None = None, cache_dir: Any = None,
                    overrides: dict[str, Any] | None = None, source: str | None = None) -> torch.nn.Module:
    """Load a folder or Hub repo holding ``config.json`` + ``model.safetensors`` (or its shards;
    any architecture it names: CAST, a conv-stem ViT, a timm ViT)."""
    info_over, model_over = split_overrides(dict(overrides or {}))
    model_id = str(model_id)
    if os.path.isdir(model_id):
        folder = Path(model_id)
        for name, there in ((CONFIG_NAME, (folder / CONFIG_NAME).is_file()), (WEIGHTS_NAME, has_weights(folder))):
            if not there:
                raise WeightsNotAvailableError(f"{model_id}: no {name} (expected {CONFIG_NAME} + {WEIGHTS_NAME} or its shards)",
                                               short=f"no {name} in the folder")
    else:
        folder = hub.download_files(model_id, [CONFIG_NAME, *WEIGHTS_PATTERNS], revision, cache_dir)
        if not (folder / CONFIG_NAME).is_file() or not has_weights(folder):
            raise WeightsNotAvailableError(f"{model_id}: the Hub repo has no {CONFIG_NAME} + {WEIGHTS_NAME}",
                                           short="not a model repo in our format")
    config_file = folder / CONFIG_NAME
    config = read_config(config_file)
    arch = str(config.get("architecture", ""))
    try:
        model = build_model(arch, **{**dict(config.get("model_args", {})), **model_over})
    except TypeError as e:
        raise CheckpointFormatError(f"{config_file}: bad model_args ({e})") from None
    load_weights(model, folder)
    model.info = info_from_config(config, model, source or model_id, info_over)  # type: ignore[assignment]
    return model


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------


def load_model(source: str | os.PathLike[str] = BUNDLED, *, revision: str | None = None, cache_dir: Any = None,
               device: str | torch.device | None = None, taxonomy: str | os.PathLike[str] | Taxonomy | None = None,
               **overrides: Any) -> torch.nn.Module:
    """Load an eval-mode model carrying its metadata as ``model.info`` (:class:`~cast.weights.ModelInfo`).

    Args:
        source: one of
            - a published name (``cast.PUBLISHED``, e.g. ``"cast_small.deit_in1k"``), downloaded from
              the Hub repo ``twke/CAST`` through huggingface_hub's cache (``HF_HUB_OFFLINE`` honoured);
            - ``"bundled"``: the default model, an H-CAST cast_tiny with class and group heads and
              PartShapes' taxonomy, package data in ``cast/assets/bundled`` (installed with the package);
              in a checkout also ``"bundled_flat"``: the flat cast_tiny trained on the same data for 8
              epochs where the default had 24 (``assets/bundled_flat``), ``"bundled_vit"``: the ViT
              baseline trained like the flat one, in ``assets/bundled_vit`` (returns the ViT, not a
              CAST) and ``"bundled_hirl"``: a
              self-supervised cast_tiny with a concept hierarchy (``assets/bundled_hirl``);
            - a local published-format file (``.pth``, ``.pth.tar``);
            - a folder or Hub repo id with ``config.json`` + ``model.safetensors`` (our format).
        revision: Hub revision (branch, tag or commit) to pin.
        cache_dir: Hub cache folder (default: huggingface_hub's, ``HF_HUB_CACHE``).
        device: where to put the model (default CPU).
        taxonomy: a taxonomy file (:mod:`cast.taxonomy`: classes per level and each one's parent) or
            object, for the names and valid paths of a hierarchical model's levels (an H-CAST file,
            which carries none); replaces a stored one. Its classes per level must equal the heads'
            (for a flat model: its finest level equals the head's classes). Its finest level's names
            become ``info.class_names``.
        overrides: ``ModelInfo`` fields (``superpixels``, ``class_names``, ``input_size``, ...)
            replace the stored metadata; anything else is passed to the model constructor.

    Returns:
        a :class:`CAST`, or a ViT baseline (``vit_conv_*`` or timm ``vit_*``) for baseline sources.

    Raises:
        WeightsNotAvailableError, UnsafeCheckpointError, CheckpointFormatError, CheckpointMismatchError.
    """
    info_over, model_over = split_overrides(overrides)
    src = resolve_source(source)
    if src.kind == "bundled":
        assert src.path is not None
        if not (src.path / CONFIG_NAME).is_file() or not has_weights(src.path):
            where = ("it is package data of cast-explorer: reinstall the package" if src.name == BUNDLED else
                     "it ships with the CAST Explorer checkout (assets/), not with the pip package: run from a clone")
            raise WeightsNotAvailableError(
                f"the bundled model {src.name!r} is not installed ({src.path} has no {CONFIG_NAME} + {WEIGHTS_NAME}); "
                f"{where}, or set {bundled_env(src.name)} to a folder holding it. "
                f"Or use a published model, one of: {', '.join(PUBLISHED)}",
                short="the bundled model is not installed",
            )
        model = load_own_format(src.path, overrides=overrides, source=src.name)
    elif src.kind == "published":
        w = PUBLISHED[src.name]
        path = hub.download(w.hub_repo, w.hub_file, revision, cache_dir)
        model = _load_published_file(path, src.name, {**w.model_kwargs(), **model_over}, w.info())
        model.info = model.info.with_(**info_over)  # type: ignore[assignment, operator]
    elif src.kind == "published_file":
        model = _load_published_file(src.name, src.name, model_over)
        model.info = model.info.with_(**info_over)  # type: ignore[assignment, operator]
    elif src.kind in ("own_file", "folder"):
        model = load_own_format(src.own_format_folder or src.name, overrides=overrides)
    else:
        model = load_own_format(src.name, revision=revision, cache_dir=cache_dir, overrides=overrides,
                                source=f"hf://{src.name}")
    if taxonomy is not None:
        attach_taxonomy(model, taxonomy, str(source))
    model.eval()
    return model.to(device) if device is not None else model


def attach_taxonomy(model: torch.nn.Module, taxonomy: str | os.PathLike[str] | Taxonomy, source: str = "model") -> None:
    """Give a loaded model (with ``model.info``) a taxonomy: checked against its heads, its finest
    level's names become the class names.

    Raises:
        TaxonomyError: the file is not a taxonomy. CheckpointFormatError: it does not fit the heads.
    """
    tax = load_taxonomy(taxonomy)
    check_taxonomy(tax, model, source)
    info = model.info  # type: ignore[union-attr]
    fine = list(tax.classes[0]) if getattr(model, "num_classes", 0) else info.class_names  # type: ignore[union-attr]
    model.info = info.with_(taxonomy=tax, class_names=fine)  # type: ignore[assignment, operator, union-attr]


def load_concepts_of(source: str | os.PathLike[str], revision: str | None = None) -> ConceptHierarchy | None:
    """The HIRL concept hierarchy saved beside a model (:mod:`cast.concepts`), from a bundled model,
    a local own-format folder or a Hub repo in our format; None when the model has none."""
    src = resolve_source(source)
    folder = src.own_format_folder
    if src.kind == "hub_repo":
        folder = hub.snapshot(src.name, [CONCEPTS_CONFIG, CONCEPTS_WEIGHTS, f"{THUMBNAILS_DIR}/*"], revision)
    return load_concepts(folder) if folder is not None and folder.is_dir() else None
