"""Export a training run to our model format (``config.json`` + ``model.safetensors`` + model card),
which :func:`cast.load_model` reads; optionally push it to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import cast
from cast.loading import build_model, save_own_format
from cast.superpixels import SuperpixelSettings
from cast.weights import ModelInfo

from .checkpoint import load_checkpoint
from .config import config_from_dict

__all__ = ["export_run", "ExportError", "model_card"]


class ExportError(RuntimeError):
    pass


def _pick_checkpoint(run_dir: Path, which: str) -> Path:
    for name in ([which] if which != "best" else ["best", "last"]):
        p = run_dir / f"{name}.pt"
        if p.is_file():
            return p
    raise ExportError(f"{run_dir}: no {which}.pt (is this a training run folder?)")


def model_card(info: ModelInfo, metrics: dict[str, Any], cfg: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    sp = info.superpixels
    if info.name.startswith("hcast"):
        levels = " → ".join(f"{n} ({k})" for n, k in zip(info.taxonomy.level_names, info.taxonomy.sizes)) if info.taxonomy else ""
        about = ("An H-CAST model (Park et al., ICLR 2025: CAST with one head per taxonomy level, finer classes read from\n"
                 f"finer segment stages; levels {levels}) trained with CAST Explorer's `train` package.")
        use = ('import cast\npredictor = cast.Predictor("path/or/repo-id")\ntree = predictor("photo.jpg")\n'
               'tree.taxonomy.levels, tree.taxonomy.consistent_path')
    elif info.name.startswith("cast"):
        about = ("A CAST model (Ke, Mo, Yu, ICLR 2024: superpixel tokens, graph pooling into a part-to-whole\n"
                 "hierarchy) trained with CAST Explorer's `train` package.")
        use = 'import cast\npredictor = cast.Predictor("path/or/repo-id")\ntree = predictor("photo.jpg")'
    else:
        about = ("A ViT baseline trained with CAST Explorer's `train` package; it is segmented by hierarchical\n"
                 "k-means of its patch tokens (`cast.baselines.ViTKMeansSegmenter`).")
        use = ('import cast\nfrom cast.baselines import ViTKMeansSegmenter\nvit = cast.load_model("path/or/repo-id")\n'
               'tree = ViTKMeansSegmenter(vit, vit.info)("photo.jpg")')
    hirl = cfg.get("hirl", {})
    concepts_row = ""
    if hirl.get("enabled"):
        concepts_row = (f"| concepts | HIRL prototype tree {' → '.join(str(m) for m in hirl.get('num_prototypes', []))} "
                        "(`concepts.*`, thumbnails in `concepts/`) |\n")
    return f"""---
library_name: cast-explorer
tags:
- cast
- image-classification
- image-segmentation
pipeline_tag: image-classification
---

# {info.name} ({cfg.get("objective", "")}, {cfg.get("data", {}).get("dataset", "")})

{about}

| setting | value |
|---|---|
| architecture | `{info.name}` |
| objective | {cfg.get("objective", "")} |
| input size | {info.input_size} x {info.input_size} (whole image resized, no crop) |
| superpixels | {sp.method}, {sp.n_segments} segments, {sp.params} |
| classes | {len(info.class_names) if info.class_names else "none (backbone)"} |
| epochs | {cfg.get("schedule", {}).get("epochs", "")} |
{concepts_row}
## Metrics

On the run's validation split, at the exported checkpoint's epoch (`epochs_trained`).

| metric | value |
|---|---|
{rows or "| (none) | |"}

## Use

```python
{use}
```
"""


def export_concepts(ckpt: dict[str, Any], cfg: Any, out_dir: Path, thumb_size: int = 64) -> None:
    """Save a HIRL run's heads, prototype tree and representative-image thumbnails beside the model."""
    import io

    from cast.concepts import ConceptHierarchy, save_concepts

    from .data.build import _base_datasets

    state = ckpt["model"]
    h = cfg.hirl
    width = int(state["concepts.prototypes_0"].shape[1])
    concepts = ConceptHierarchy(width, list(h.num_prototypes), h.hidden, h.temperature)
    concepts.load_state_dict({k.removeprefix("concepts."): v for k, v in state.items() if k.startswith("concepts.")})
    if int(state["clustered_epoch"]) < 0:
        raise ExportError("this HIRL run never clustered (stopped during hirl.warmup_epochs): no concepts to export")
    train_base, _, _ = _base_datasets(cfg)
    reps = state["representatives"]  # [L, M_max, R] training-set indices, -1 = none
    thumbs: dict[tuple[int, int], list[bytes]] = {}
    for lv, m in enumerate(concepts.num_prototypes):
        for k in range(m):
            images = []
            for idx in reps[lv, k].tolist():
                if idx < 0:
                    continue
                img = train_base[idx][0].convert("RGB")
                img.thumbnail((thumb_size, thumb_size))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=85)
                images.append(buf.getvalue())
            if images:
                thumbs[(lv + 1, k)] = images
    save_concepts(concepts, out_dir, thumbs)


def export_run(run_dir: str | Path, out_dir: str | Path, which: str = "best", use_ema: bool = False,
               push_to_hub: str | None = None, private: bool = False, half: bool = False) -> Path:
    """Write the run's model in our format to ``out_dir``; returns ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt = load_checkpoint(_pick_checkpoint(run_dir, which))
    cfg = config_from_dict(ckpt["config"])
    name = ckpt["model_name"]
    if "level_classes" in ckpt["model_kwargs"] and not name.startswith("hcast"):
        raise ExportError(f"{run_dir}: a Hier-ViT run (a baseline with per-level heads) has no CAST Explorer model format; "
                          "evaluate it from its checkpoint (python -m train evaluate-taxonomy)")
    try:
        model = build_model(name, **ckpt["model_kwargs"])  # CAST, H-CAST, or a ViT baseline
    except cast.WeightsNotAvailableError as e:
        raise ExportError(str(e)) from None
    if use_ema:
        if not ckpt.get("ema"):
            raise ExportError("this run kept no EMA weights (run.ema was false)")
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    else:
        state = {k[len("model."):]: v for k, v in ckpt["model"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.eval()
    sp = cfg.data.superpixels
    kept = ("top1", "knn_top1", "fpa", "tice")
    metrics = {k: v for rec in ckpt.get("history", []) for k, v in rec.items() if k in kept or k.startswith("top1_")}
    metrics.update({"epochs_trained": ckpt["epoch"], "steps": ckpt["step"]})
    if ckpt.get("best_metric") not in (None, float("-inf")):
        metrics["best_val_metric"] = float(ckpt["best_metric"])
    model.model_args = dict(ckpt["model_kwargs"])  # type: ignore[assignment]
    model.info = ModelInfo(
        name=name, family="cast-explorer", superpixels=SuperpixelSettings(sp.method, sp.n_segments, dict(sp.params)),
        input_size=cfg.data.image_size,
        class_names=list(ckpt["class_names"]) if getattr(model, "num_classes", 0) > 0 else None,
        source=str(out_dir), extra={"objective": cfg.objective, "dataset": cfg.data.dataset, "metrics": metrics,
                                    "run": run_dir.name},
        taxonomy=cast.Taxonomy.from_dict(ckpt["taxonomy"]) if ckpt.get("taxonomy") else None,
    )
    save_own_format(model, out_dir, dtype=torch.float16 if half else None)
    if any(k.startswith("concepts.") for k in ckpt["model"]):
        export_concepts(ckpt, cfg, out_dir)
    (out_dir / "README.md").write_text(model_card(model.info, metrics, ckpt["config"]))
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(out_dir), commit_message=f"Export {run_dir.name}")
    return out_dir

