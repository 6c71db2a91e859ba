"""Hierarchical part/object segmentation evaluation of CAST and of the ViT + k-means baseline.

``python -m train evaluate --model SOURCE --data partshapes:test [--out DIR]``

Per level 1 (finest) .. 4 (coarsest):
- **part / object mIoU, oracle labelling** (protocol i): every predicted segment takes the
  ground-truth label covering most of its pixels; mIoU of one image = mean IoU over the classes
  present in ground truth or prediction; averaged over images. Measures how well segments align
  with true parts / objects, independently of any classifier.
- **part / object mIoU, model labelling** (protocol ii, as in the paper, which used CLIP): every
  segment is shown to the model alone (everything else grey). *Objects*: a segment belongs to the
  object if the masked-segment probability of the class predicted for the whole image is >= 0.5,
  and takes that class; otherwise background. *Parts*: a segment given to the object is labelled
  with the nearest part prototype (cosine, the model's own [CLS] features of ground-truth parts
  shown alone, from a reference split) among the parts of the predicted class. Needs a
  classification head.
- **hierarchy consistency**: share of segments lying >= 95 % inside the object or the background.
- **boundary F-score** (2 px tolerance) against ground-truth part boundaries.
Plus top-1 accuracy, GMACs per image and segmentation throughput (images/s, end to end).

**Taxonomy metrics** (``"taxonomy"`` in the results; H-CAST's): for a model with a taxonomy (one it
carries, ``--taxonomy FILE``, or PartShapes' own when the data is PartShapes and the sizes fit):
per-level top-1, full-path accuracy (FPA: every level right), tree-inconsistency error (TICE: share of
predicted tuples that are not a path) and, for hierarchical heads, the FPA of the consistent path.
A hierarchical model's levels are its heads' argmaxes; a flat model's are its fine prediction read up
the tree (so its TICE is 0). A Hier-ViT training run (``--model RUN_DIR`` or its ``.pt``; no CAST
Explorer format) gets the taxonomy metrics only.

``DATASET`` is ``partshapes:SPLIT[:N]`` (rendered) or a folder in the export layout
(``images/<class>/*.png``, ``part_masks/<class>/*.png``, ``object_masks/<class>/*.png``,
optional ``meta.json``), e.g. PartImageNet converted to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import cast
from cast.hierarchy import Hierarchy
from cast.segmenter import Segmenter
from cast.taxonomy import Taxonomy, hierarchical_metrics

from .metrics import boundary_f, boundary_recall, consistency, miou, oracle_labels

__all__ = ["EvalData", "load_eval_data", "evaluate", "evaluate_run", "masked_segments", "taxonomy_for"]

LEVELS = (1, 2, 3, 4)
GREY = 128


@dataclass
class EvalData:
    name: str
    classes: list[str]
    part_class: list[int]  # class index owning each global part id (-1: background)
    samples: Any  # sequence of (image [H,W,3] uint8, label, object_mask, part_mask)

    def __len__(self) -> int:
        return len(self.samples)


class _Rendered:
    def __init__(self, split: str, n: int, image_size: int) -> None:
        self.split, self.n, self.image_size = split, n, image_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        from .data.partshapes import render

        s = render(i, self.split, image_size=self.image_size)
        return s.image, s.label, s.object_mask, s.part_mask


class _Folder:
    def __init__(self, root: Path, n: int | None) -> None:
        self.root = root
        self.items = sorted((root / "images").glob("*/*.png")) + sorted((root / "images").glob("*/*.jpg"))
        self.classes = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
        if n:
            step = max(len(self.items) / n, 1.0)
            self.items = [self.items[int(i * step)] for i in range(min(n, len(self.items)))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        p = self.items[i]
        cls, stem = p.parent.name, p.stem
        image = np.asarray(Image.open(p).convert("RGB"))
        part = np.asarray(Image.open(self.root / "part_masks" / cls / f"{stem}.png"))
        obj_path = self.root / "object_masks" / cls / f"{stem}.png"
        obj = np.asarray(Image.open(obj_path)) if obj_path.is_file() else (part > 0).astype(np.uint8)
        return image, self.classes.index(cls), obj, part


def load_eval_data(spec: str, n: int | None = None, image_size: int = 160) -> EvalData:
    """``partshapes:SPLIT[:N]`` or a folder in the export layout."""
    if spec.startswith("partshapes"):
        from .data.partshapes import CLASSES, PART_CLASS

        parts = spec.split(":")
        split = parts[1] if len(parts) > 1 else "test"
        count = int(parts[2]) if len(parts) > 2 else (n or 500)
        return EvalData(f"partshapes:{split}", list(CLASSES), list(PART_CLASS), _Rendered(split, n or count, image_size))
    root = Path(spec)
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{spec}: expected partshapes:SPLIT or a folder with images/ and part_masks/")
    folder = _Folder(root, n)
    meta = json.loads((root / "meta.json").read_text()) if (root / "meta.json").is_file() else {}
    part_class = meta.get("part_class") or [-1] + [-2] * 255  # unknown ownership: any part allowed
    return EvalData(str(root), meta.get("classes", folder.classes), list(part_class), folder)


def masked_segments(tree: Hierarchy, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Each level-``level`` segment alone (grey elsewhere) at the working resolution:
    ``[n, S, S, 3]`` uint8 images and their ``[n]`` ids."""
    ids = np.array([n.id for n in tree.nodes_at(level)])
    return tree.masked_images(level, ids, grey=GREY), ids


def _batched(seg: Segmenter, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray | None, np.ndarray]:
    probs, feats = [], []
    for i in range(0, len(images), batch):
        p, f = seg.classify_embed(images[i:i + batch])
        feats.append(f)
        if p is not None:
            probs.append(p)
    return (np.concatenate(probs) if probs else None), np.concatenate(feats)


def part_prototypes(seg: Segmenter, ref: EvalData, n: int) -> dict[int, np.ndarray]:
    """Mean L2-normalised [CLS] feature of each ground-truth part shown alone (reference images)."""
    s = seg.input_size
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for i in range(min(n, len(ref))):
        image, _, _, part = ref.samples[i]
        work = np.asarray(Image.fromarray(image).resize((s, s), Image.Resampling.BILINEAR))
        part_w = np.asarray(Image.fromarray(part).resize((s, s), Image.Resampling.NEAREST))
        ids = [int(k) for k in np.unique(part_w) if k > 0]
        if not ids:
            continue
        imgs = np.stack([np.where((part_w == k)[..., None], work, np.uint8(GREY)) for k in ids]).astype(np.uint8)
        _, feats = seg.classify_embed(imgs)
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
        for k, f in zip(ids, feats):
            sums[k] = sums.get(k, 0) + f
            counts[k] = counts.get(k, 0) + 1
    return {k: v / np.linalg.norm(v).clip(1e-12) for k, v in sums.items()}


def _model_labels(seg: Segmenter, tree: Hierarchy, level: int, predicted: int, protos: dict[int, np.ndarray],
                  part_class: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Protocol (ii): object and part label of every level-``level`` segment -> label maps."""
    imgs, ids = masked_segments(tree, level)
    probs, feats = _batched(seg, imgs)
    assert probs is not None
    is_obj = probs[:, predicted] >= 0.5
    allowed = [k for k, c in enumerate(part_class) if k > 0 and (c == predicted or c == -2) and k in protos]
    obj_lut = np.zeros(int(ids.max()) + 1, np.int64)
    part_lut = np.zeros(int(ids.max()) + 1, np.int64)
    obj_lut[ids[is_obj]] = predicted + 1
    if allowed and is_obj.any():
        P = np.stack([protos[k] for k in allowed])
        f = feats[is_obj] / np.linalg.norm(feats[is_obj], axis=1, keepdims=True).clip(1e-12)
        part_lut[ids[is_obj]] = np.array(allowed)[(f @ P.T).argmax(1)]
    m = tree.label_maps[level - 1]
    return obj_lut[m], part_lut[m]


def _map_metrics(add: Any, lv: int, m: np.ndarray, part: np.ndarray, gt_obj: np.ndarray, obj: np.ndarray,
                 suffix: str) -> None:
    """The label-map metrics of one level (``suffix`` names the variant of the maps)."""
    add("part_miou_oracle" + suffix, lv, miou(oracle_labels(m, part), part))
    add("object_miou_oracle" + suffix, lv, miou(oracle_labels(m, gt_obj), gt_obj))
    add("consistency" + suffix, lv, consistency(m, obj))
    add("boundary_f" + suffix, lv, boundary_f(m, part))
    add("boundary_recall" + suffix, lv, boundary_recall(m, part))


def taxonomy_for(seg: Segmenter, data: EvalData) -> Taxonomy | None:
    """The taxonomy the model's levels are scored against: its own, else PartShapes' when the data
    is PartShapes and the model's heads (or its one head, then the 2-level one) fit it."""
    if seg.info.taxonomy is not None:
        return seg.info.taxonomy
    if not data.name.startswith("partshapes"):
        return None
    from .data.partshapes import CLASSES, partshapes_taxonomy

    levels = getattr(seg.model, "level_classes", None)
    if levels is not None:
        return partshapes_taxonomy(len(levels)) if len(levels) in (2, 3) else None
    if seg.has_head and list(seg.info.class_names or []) == list(CLASSES):  # a flat model: read up the 2-level tree
        return partshapes_taxonomy(2)
    return None


def _taxonomy_ids(tree: Hierarchy, taxonomy: Taxonomy, fine: int | None) -> tuple[list[int] | None, list[int] | None]:
    """(predicted class per level, consistent path) of one tree; a flat model's fine class read up the tree."""
    if tree.taxonomy is not None:
        ids = [taxonomy.classes[t].index(name) for t, name in enumerate(tree.taxonomy.argmax_path)]
        path = tree.taxonomy.consistent_path
        return ids, None if path is None else [taxonomy.classes[t].index(n) for t, n in enumerate(path)]
    if fine is None:
        return None, None
    return list(taxonomy.ancestors(fine)), None


def _fine_prediction(seg: Segmenter, tree: Hierarchy) -> int | None:
    """The class the model gives the whole image (index into its class names)."""
    names = seg.info.class_names
    if names is None:
        return None
    if tree.taxonomy is not None:
        return names.index(tree.taxonomy.argmax_path[0])
    if tree.level_predictions is not None:
        return names.index(tree.level_predictions[3][0][0])
    return None


def taxonomy_summary(taxonomy: Taxonomy, predicted: list[list[int]], truth: list[list[int]],
                     consistent: list[list[int]]) -> dict[str, Any] | None:
    if not predicted:
        return None
    m = hierarchical_metrics(np.array(predicted), np.array(truth), taxonomy)
    out: dict[str, Any] = {"levels": list(taxonomy.level_names), **m}
    if consistent and len(consistent) == len(truth):
        out["fpa_consistent"] = float(np.mean([c == t for c, t in zip(consistent, truth)]))
    return out


def evaluate(source: str, data: EvalData, model_label_n: int = 50, ref: EvalData | None = None,
             ref_n: int = 100, progress: bool = True, taxonomy: str | None = None) -> dict[str, Any]:
    """Run every metric; returns a JSON-ready dict (per-level means and model facts)."""
    from torch.utils.flop_counter import FlopCounterMode
    from tqdm import tqdm

    seg = cast.load_segmenter(source, taxonomy=taxonomy)
    tax = taxonomy_for(seg, data)
    tax_pred: list[list[int]] = []
    tax_true: list[list[int]] = []
    tax_consistent: list[list[int]] = []
    use_model = seg.has_head and model_label_n > 0
    protos = part_prototypes(seg, ref, ref_n) if use_model and ref is not None else {}
    acc: dict[str, dict[int, list[float]]] = {}

    def add(metric: str, level: int, value: float) -> None:
        acc.setdefault(metric, {}).setdefault(level, []).append(value)

    correct, counted, seg_time = 0, 0, 0.0
    bar = tqdm(range(len(data)), desc=f"evaluate {Path(str(source)).name}", unit="img", disable=not progress)
    for i in bar:
        image, label, obj, part = data.samples[i]
        t = time.perf_counter()
        tree = seg(image)
        seg_time += time.perf_counter() - t
        gt_obj = np.where(obj > 0, label + 1, 0)
        predicted = _fine_prediction(seg, tree)
        if predicted is not None:
            correct += int(predicted == label)
            counted += 1
        if tax is not None:
            ids, path = _taxonomy_ids(tree, tax, predicted)
            if ids is not None:
                tax_pred.append(ids)
                tax_true.append(list(tax.ancestors(int(label))))
            if path is not None:
                tax_consistent.append(path)
        nearest = tree.nearest_label_maps() if image.shape[0] > seg.input_size or image.shape[1] > seg.input_size else None
        for lv in LEVELS:
            m = tree.label_maps[lv - 1]
            add("num_segments", lv, float(len(tree.nodes_at(lv))))
            _map_metrics(add, lv, m, part, gt_obj, obj, "")
            if nearest is not None:  # the same tree without boundary refinement, for comparison
                _map_metrics(add, lv, nearest[lv - 1], part, gt_obj, obj, "_nearest")
            if use_model and predicted is not None and i < model_label_n:
                obj_pred, part_pred = _model_labels(seg, tree, lv, predicted, protos, data.part_class)
                add("object_miou_model", lv, miou(obj_pred, gt_obj))
                add("part_miou_model", lv, miou(part_pred, part))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        inputs = seg.flop_inputs()
        seg.model(*inputs)
    levels = {str(lv): {k: float(np.mean(v[lv])) for k, v in acc.items() if lv in v} for lv in LEVELS}
    return {
        "model": str(source), "architecture": seg.info.name, "data": data.name, "images": len(data),
        "model_label_images": min(model_label_n, len(data)) if use_model else 0,
        "top1": correct / counted if counted else None,
        "taxonomy": taxonomy_summary(tax, tax_pred, tax_true, tax_consistent) if tax is not None else None,
        "gmacs": counter.get_total_flops() / 2e9,
        "images_per_s": len(data) / seg_time if seg_time else None,
        "levels": levels,
    }


def format_table(result: dict[str, Any]) -> str:
    if not result.get("levels"):  # a run evaluated on its taxonomy only (Hier-ViT)
        tax = result["taxonomy"]
        levels = ", ".join(f"{n} {v:.3f}" for n, v in zip(tax["levels"], tax["top1"]))
        return (f"{result['architecture']} on {result['data']} ({result['images']} images): taxonomy top-1 per level "
                f"{levels}; FPA {tax['fpa']:.3f}; TICE {tax['tice']:.3f}")
    cols = ["num_segments", "object_miou_oracle", "part_miou_oracle", "object_miou_model", "part_miou_model",
            "consistency", "boundary_f"]
    head = "| level | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    rows = []
    for lv, vals in result["levels"].items():
        rows.append(f"| {lv} | " + " | ".join(f"{vals[c]:.3f}" if c in vals else "–" for c in cols) + " |")
    top1 = "n/a" if result["top1"] is None else f"{result['top1']:.3f}"
    text = (f"{result['architecture']} on {result['data']} ({result['images']} images): top-1 {top1}, "
            f"{result['gmacs']:.3f} GMACs, {result['images_per_s']:.1f} images/s\n\n" + head + "\n".join(rows))
    tax = result.get("taxonomy")
    if tax:
        levels = ", ".join(f"{n} {v:.3f}" for n, v in zip(tax["levels"], tax["top1"]))
        text += f"\n\ntaxonomy: top-1 per level {levels}; FPA {tax['fpa']:.3f}; TICE {tax['tice']:.3f}"
        if "fpa_consistent" in tax:
            text += f"; FPA of the consistent path {tax['fpa_consistent']:.3f}"
    first = result["levels"].get("1", {})
    if "part_miou_oracle_nearest" in first:
        text += ("\n\nlevel 1, refined boundaries vs nearest lookup: part mIoU (oracle) "
                 f"{first['part_miou_oracle']:.3f} vs {first['part_miou_oracle_nearest']:.3f}, boundary recall (2 px) "
                 f"{first['boundary_recall']:.3f} vs {first['boundary_recall_nearest']:.3f}, boundary F "
                 f"{first['boundary_f']:.3f} vs {first['boundary_f_nearest']:.3f}")
    return text



def evaluate_run(run: str | Path, data: EvalData, progress: bool = True) -> dict[str, Any]:
    """Taxonomy metrics of a training run's model straight from its checkpoint (``RUN_DIR`` -> ``best.pt``,
    or a ``.pt``): for models with no CAST Explorer format (Hier-ViT). Images are resized to the model's
    input (no crop), as every segmenter does."""
    from tqdm import tqdm

    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .data.views import eval_view
    from .engine import build_model, level_predictions, load_taxonomy
    from .objectives import encode

    path = Path(run)
    if path.is_dir():
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), path / "best.pt")
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    taxonomy = Taxonomy.from_dict(ckpt["taxonomy"]) if ckpt.get("taxonomy") else load_taxonomy(cfg)
    if taxonomy is None:
        raise ValueError(f"{path}: this run trained on no taxonomy")
    model = build_model(cfg, len(ckpt["class_names"]), taxonomy)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["model"].items() if k.startswith("model.")})
    model.eval()
    view = eval_view(cfg.data.image_size, None)  # what the run's validation saw: resized whole, normalised
    paths = torch.tensor(taxonomy.paths())
    predicted, truth = [], []
    for i in tqdm(range(len(data)), desc=f"evaluate {path.parent.name}", unit="img", disable=not progress):
        image, label, _, _ = data.samples[i]
        x, sp = view(Image.fromarray(image))
        with torch.no_grad():
            predicted.append(level_predictions(encode(model, x[None], sp[None]), paths)[0].tolist())
        truth.append(list(taxonomy.ancestors(int(label))))
    return {"model": str(run), "architecture": f"hier-{ckpt['model_name']}", "data": data.name, "images": len(data),
            "top1": float(np.mean([p[0] == t[0] for p, t in zip(predicted, truth)])),
            "taxonomy": taxonomy_summary(taxonomy, predicted, truth, []), "levels": {}}
