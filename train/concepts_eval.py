"""Evaluate the semantic side of self-supervised CAST models (HIRL vs plain MoCo-v3).

``python -m train concepts --model DIR [--model DIR2 ...] --data partshapes:test:500 --ref partshapes:train:1000``

For each model, on the final [CLS] feature of images shown whole (resized, no crop):

- **k-NN top-1** (weighted, k=20, t=0.07, the training-time validation) and **linear-probe top-1**
  (a linear classifier fitted on the reference features);
- **purity** of every concept level against PartShapes' classes and against a coarse grouping of
  the classes (:data:`train.data.partshapes.COARSE_GROUPS`, defined before any result was seen):
  the share of images whose concept's majority label is their own. Models trained with HIRL use
  their own prototypes (nearest by the level heads); other models get hierarchical spherical
  k-means of their reference features with the same numbers of clusters, as a reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import cast
from cast.clustering import kmeans_tree
from cast.concepts import load_concepts
from cast.segmenter import Segmenter

from .evaluate import EvalData, load_eval_data
from .metrics import purity
from .objectives import knn_top1

__all__ = ["features", "linear_probe", "evaluate_concepts"]


def features(seg: Segmenter, data: EvalData, batch: int = 32, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Final [CLS] features ``[N, D]`` (the evaluation segmenter's ``classify_embed``) and labels ``[N]``."""
    s = seg.input_size
    feats, labels = [], []
    for start in tqdm(range(0, len(data), batch), desc=desc, unit="batch", leave=False):
        items = [data.samples[i] for i in range(start, min(start + batch, len(data)))]
        images = np.stack([np.asarray(Image.fromarray(it[0]).resize((s, s), Image.Resampling.BILINEAR)) for it in items])
        feats.append(torch.from_numpy(seg.classify_embed(images)[1]))
        labels += [int(it[1]) for it in items]
    return torch.cat(feats), torch.tensor(labels)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-4) -> float:
    """Top-1 of a linear classifier (full-batch AdamW on standardised features)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (x - mean) / std
    torch.manual_seed(0)
    clf = torch.nn.Linear(a.shape[1], num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = F.cross_entropy(clf(a), train_y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((clf(b).argmax(1) == y).float().mean())


def evaluate_concepts(source: str, data: EvalData, ref: EvalData, coarse: list[int] | None = None,
                      num_prototypes: list[int] | None = None) -> dict[str, Any]:
    """Metrics of one model (see the module docstring). ``coarse[c]`` = coarse group of class ``c``."""
    seg = cast.load_segmenter(source)
    concepts = load_concepts(source) if Path(source).is_dir() else None
    ref_x, ref_y = features(seg, ref, desc="reference features")
    x, y = features(seg, data, desc="evaluation features")
    n_cls = len(data.classes)
    out: dict[str, Any] = {
        "model": source, "data": data.name, "n": len(data), "ref": ref.name, "ref_n": len(ref),
        "knn_top1": knn_top1(ref_x, ref_y, x, y, n_cls, k=20, t=0.07),
        "linear_top1": linear_probe(ref_x, ref_y, x, y, n_cls),
    }
    if concepts is not None:
        out["concepts"] = "HIRL prototypes (nearest by the level heads)"
        levels = concepts.nearest(x).T  # [L, N]
        counts = concepts.num_prototypes
    else:
        counts = list(num_prototypes or [40, 10, 3])
        out["concepts"] = f"hierarchical spherical k-means of the reference features ({counts})"
        protos, _, _ = kmeans_tree(ref_x, counts, seed=0)
        xn = F.normalize(x, dim=1)
        levels = torch.stack([(xn @ p.t()).argmax(1) for p in protos])
    out["num_prototypes"] = counts
    out["levels"] = []
    coarse_y = torch.tensor([coarse[int(c)] for c in y]) if coarse is not None else None
    for lv, assign in enumerate(levels, start=1):
        row = {"level": lv, "prototypes": counts[lv - 1], "used": int(assign.unique().numel()),
               "purity_classes": purity(assign, y)}
        if coarse_y is not None:
            row["purity_coarse"] = purity(assign, coarse_y)
        out["levels"].append(row)
    return out


def run(models: list[str], data_spec: str, ref_spec: str, out: str | None, image_size: int = 160) -> list[dict[str, Any]]:
    from .data.partshapes import CLASSES, COARSE_GROUPS

    data = load_eval_data(data_spec, image_size=image_size)
    ref = load_eval_data(ref_spec, image_size=image_size)
    coarse = None
    if data.classes == list(CLASSES):
        group_of = {c: g for g, (_, members) in enumerate(COARSE_GROUPS.items()) for c in members}
        coarse = [group_of[c] for c in CLASSES]
    results = []
    for m in models:
        r = evaluate_concepts(m, data, ref, coarse)
        if coarse is not None:
            r["coarse_groups"] = COARSE_GROUPS
        results.append(r)
        print(format_result(r))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{Path(m).name}.json").write_text(json.dumps(r, indent=2) + "\n")
    return results


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['model']}: k-NN top-1 {r['knn_top1']:.3f}, linear top-1 {r['linear_top1']:.3f} ({r['concepts']})"]
    for row in r["levels"]:
        extra = f", coarse {row['purity_coarse']:.3f}" if "purity_coarse" in row else ""
        lines.append(f"  level {row['level']} ({row['used']}/{row['prototypes']} used): purity classes {row['purity_classes']:.3f}{extra}")
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]], eval_dir: str | None = None) -> str:
    """The results table for docs/concepts.md (between ``<!-- hirl:start -->`` and ``<!-- hirl:end -->``);
    part/object mIoU (oracle labelling, per level) comes from ``python -m train evaluate`` files
    of the same names in ``eval_dir`` when they exist."""
    lines = ["| model | k-NN top-1 | linear top-1 | concept purity vs classes (L1 / L2 / L3) | vs coarse groups "
             "(L1 / L2 / L3) | object / part mIoU, oracle (level 1 / 4) |", "|---|---|---|---|---|---|"]
    for r in results:
        name = Path(r["model"]).name
        pc = " / ".join(f"{row['purity_classes']:.3f}" for row in r["levels"])
        pg = " / ".join(f"{row.get('purity_coarse', float('nan')):.3f}" for row in r["levels"])
        miou = ""
        f = Path(eval_dir or "") / f"{name}.json"
        if eval_dir and f.is_file():
            lv = json.loads(f.read_text())["levels"]
            miou = (f"{lv['1']['object_miou_oracle']:.3f} / {lv['4']['object_miou_oracle']:.3f} · "
                    f"{lv['1']['part_miou_oracle']:.3f} / {lv['4']['part_miou_oracle']:.3f}")
        kind = "HIRL prototypes" if r["concepts"].startswith("HIRL") else "k-means of features"
        lines.append(f"| {name} ({kind}, {'→'.join(str(m) for m in r['num_prototypes'])}) | {r['knn_top1']:.3f} | "
                     f"{r['linear_top1']:.3f} | {pc} | {pg} | {miou} |")
    groups = results[0].get("coarse_groups") if results else None
    if groups:
        lines.append("")
        lines.append("Coarse groups: " + "; ".join(f"*{g}*: {', '.join(m)}" for g, m in groups.items()) + ".")
    return "\n".join(lines)


def write_readme(results: list[dict[str, Any]], readme: str, eval_dir: str | None = None) -> None:
    text = Path(readme).read_text()
    start, end = "<!-- hirl:start -->", "<!-- hirl:end -->"
    if start not in text or end not in text:
        raise FileNotFoundError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    Path(readme).write_text(f"{head}{start}\n{markdown(results, eval_dir)}\n{end}{tail}")
