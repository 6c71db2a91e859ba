"""Our own weight format, as the models' ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A model folder (local or a Hub repo) holds ``config.json`` and the weights, ``model.safetensors``
or, above :data:`MAX_SHARD_SIZE`, shards ``model-00001-of-0000N.safetensors`` with the standard
``model.safetensors.index.json`` (huggingface_hub's sharding helpers write and read them, so no
file needs Git LFS on a Hub Space)::

    {"format": "cast-explorer", "format_version": 1, "architecture": "cast_tiny",
     "model_args": {... the constructor arguments ...}, "info": {ModelInfo fields},
     "weights_dtype": "float32" | "float16"}

:class:`OwnFormatMixin` is huggingface_hub's ``PyTorchModelHubMixin`` speaking that format. This
module only turns one model object into files and files back into that object's weights; finding
the files (sources, friendly download errors, published checkpoints) is :mod:`cast.loading`'s job,
which reuses the readers below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin, snapshot_download

from ..errors import CheckpointFormatError, CheckpointMismatchError, WeightsNotAvailableError
from ..taxonomy import Taxonomy, TaxonomyMismatchError
from ..weights import ModelInfo

__all__ = [
    "OwnFormatMixin", "CONFIG_NAME", "WEIGHTS_NAME", "WEIGHTS_INDEX_NAME", "WEIGHTS_PATTERNS", "FORMAT_NAME",
    "FORMAT_VERSION", "MAX_SHARD_SIZE", "has_weights",
    "own_format_config", "write_own_format", "check_config", "check_taxonomy", "read_config", "load_weights", "info_from_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", WEIGHTS_INDEX_NAME]
MAX_SHARD_SIZE = "9MB"  # below the Hub's 10 MiB limit for files outside Git LFS
FORMAT_NAME = "cast-explorer"
FORMAT_VERSION = 1
INFO_FIELDS = frozenset(ModelInfo.__dataclass_fields__)


def own_format_config(model: torch.nn.Module) -> dict[str, Any]:
    """``config.json`` of a model: architecture, constructor arguments and metadata."""
    info: ModelInfo = getattr(model, "info", None) or model.default_info()  # type: ignore[operator]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": info.name,
        "model_args": dict(model.model_args),  # type: ignore[arg-type]
        "info": info.to_dict(),
    }


def has_weights(directory: str | os.PathLike[str]) -> bool:
    """Whether a folder holds our weights (one file or an index of shards)."""
    return (Path(directory) / WEIGHTS_NAME).is_file() or (Path(directory) / WEIGHTS_INDEX_NAME).is_file()


def write_own_format(model: torch.nn.Module, directory: str | os.PathLike[str], dtype: torch.dtype | None = None,
                     max_shard_size: int | str = MAX_SHARD_SIZE) -> Path:
    """Write ``config.json`` and the weights into ``directory`` (created if needed).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights at that precision, halving the
    files; loading casts them back to the model's float32 parameters. Weights above
    ``max_shard_size`` are split into shards with an index (huggingface_hub's
    ``save_torch_state_dict``); tensors the model shares under two names are stored once.
    """
    from huggingface_hub import save_torch_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("model-*-of-*.safetensors"), directory / WEIGHTS_NAME, directory / WEIGHTS_INDEX_NAME]:
        old.unlink(missing_ok=True)  # a rewrite with fewer shards leaves no stale ones behind
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        state = _reshare(model.state_dict(), state)
    save_torch_state_dict(state, directory, max_shard_size=max_shard_size)
    config = own_format_config(model)
    config["weights_dtype"] = str(dtype or torch.float32).removeprefix("torch.")
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def check_config(config: Any, where: str) -> dict[str, Any]:
    """``config`` if it is one of ours that this library can read, else :class:`CheckpointFormatError`."""
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointFormatError(f"{where}: not a {FORMAT_NAME} config (missing \"format\": \"{FORMAT_NAME}\")",
                                    short=f"not a {FORMAT_NAME} model folder")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{where}: format version {config['format_version']} is newer than this library reads ({FORMAT_VERSION})",
            short="the model was saved by a newer version of this library",
        )
    return config


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``config.json``."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path}: unreadable config.json ({e})") from None
    return check_config(config, str(path))


def _reshare(original: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give keys that shared one tensor in ``original`` one shared tensor again after a dtype cast
    (so the writer stores it once)."""
    first: dict[int, str] = {}
    out = dict(converted)
    for key, tensor in original.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -id(tensor)
        if ptr in first and original[first[ptr]].shape == tensor.shape:
            out[key] = out[first[ptr]]
        else:
            first.setdefault(ptr, key)
    return out


def _aliases(model: torch.nn.Module) -> set[str]:
    """State-dict keys that name a tensor another key names too (stored once in our files)."""
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    out = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tuple(tensor.shape))
        if tensor.numel() and ident in seen:
            out |= {key, seen[ident]}
        else:
            seen[ident] = key
    return out


def load_weights(model: torch.nn.Module, weights: str | os.PathLike[str]) -> torch.nn.Module:
    """Load our weights (a ``.safetensors`` file, or a folder with one file or an index of shards)
    into ``model``; every key must fit (strict up to shared aliases), any float dtype is cast."""
    from huggingface_hub import load_torch_model
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = type(model).__name__
    path = Path(weights)
    single = path if path.is_file() else path / WEIGHTS_NAME
    try:
        if not (path.is_dir() and (path / WEIGHTS_INDEX_NAME).is_file()):
            # one file; files written before sharding carry no huggingface_hub metadata, so read it directly
            missing, unexpected = model.load_state_dict(load_file(str(single)), strict=False)
        else:
            missing, unexpected = load_torch_model(model, path, strict=False, safe=True)
    except SafetensorError as e:
        raise CheckpointFormatError(f"{weights}: unreadable safetensors file ({e})") from None
    except (OSError, ValueError, json.JSONDecodeError) as e:  # missing shard, bad index
        raise CheckpointFormatError(f"{weights}: unreadable weights ({e})") from None
    except RuntimeError as e:  # size mismatch
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "size mismatch"
        raise CheckpointMismatchError(f"{weights} does not fit {name}: {first}") from None
    aliases = _aliases(model)
    missing = [k for k in missing if k not in aliases]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights} does not fit {name}: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return model


def info_from_config(config: dict[str, Any], model: torch.nn.Module, source: str,
                     overrides: dict[str, Any] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` a config stores, with ``source`` and ``overrides`` applied and the
    class names checked against the model's head."""
    info = ModelInfo.from_dict({**config.get("info", {}), "name": str(config.get("architecture", ""))})
    info = info.with_(source=source, **(overrides or {}))
    num_classes = int(getattr(model, "num_classes", 0))
    if info.class_names is not None and len(info.class_names) != num_classes:
        raise CheckpointFormatError(f"{source}: {len(info.class_names)} class names for {num_classes} outputs")
    if info.taxonomy is not None:
        check_taxonomy(info.taxonomy, model, source)
    return info


def check_taxonomy(taxonomy: Taxonomy, model: torch.nn.Module, source: str) -> None:
    """A taxonomy must have as many classes per level as a hierarchical model's heads (a flat model:
    as many fine classes as its head)."""
    levels = getattr(model, "level_classes", None)
    if levels is not None and getattr(model, "num_classes", 0) > 0 and tuple(levels) != taxonomy.sizes:
        raise TaxonomyMismatchError(f"{source}: the taxonomy has {'/'.join(map(str, taxonomy.sizes))} classes per level, "
                                    f"the model's heads {'/'.join(map(str, levels))}")
    if levels is None and getattr(model, "num_classes", 0) not in (0, taxonomy.sizes[0]):
        raise TaxonomyMismatchError(f"{source}: the taxonomy's finest level has {taxonomy.sizes[0]} classes, the model's "
                                    f"head {model.num_classes}")


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ModelInfo fields, constructor arguments)`` of a mixed set of keyword overrides."""
    info = {k: v for k, v in overrides.items() if k in INFO_FIELDS}
    model = {k: v for k, v in overrides.items() if k not in INFO_FIELDS}
    return info, model


class OwnFormatMixin(PyTorchModelHubMixin):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (huggingface_hub) in our format.

    Models using it set ``self.model_args`` (their constructor arguments) and implement
    ``default_info()`` (metadata of a model that was built rather than loaded).
    """

    model_args: dict[str, Any]

    def default_info(self) -> ModelInfo:  # pragma: no cover - every model overrides it
        raise NotImplementedError

    def _save_pretrained(self, save_directory: Path) -> None:  # ModelHubMixin hook
        write_own_format(self, save_directory)  # type: ignore[arg-type]

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: Any, force_download: bool,
                         local_files_only: bool, token: Any, config: dict | None = None, **model_kwargs: Any) -> Any:
        where = os.path.join(model_id, CONFIG_NAME) if os.path.isdir(model_id) else f"{model_id}/{CONFIG_NAME}"
        if config is None:
            raise WeightsNotAvailableError(f"{where}: not found", short=f"no {CONFIG_NAME}")
        config = check_config(config, where)
        if os.path.isdir(model_id):
            weights = model_id
        else:
            weights = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, allow_patterns=WEIGHTS_PATTERNS,
                                        force_download=force_download, local_files_only=local_files_only, token=token)
        info_over, args_over = split_overrides(model_kwargs)
        try:
            model = cls(**{**config.get("model_args", {}), **args_over})
        except TypeError as e:
            raise CheckpointFormatError(f"{where}: bad model_args ({e})") from None
        load_weights(model, weights)  # type: ignore[arg-type]
        model.info = info_from_config(config, model, model_id, info_over)  # type: ignore[attr-defined]
        return model.eval()  # type: ignore[attr-defined]
