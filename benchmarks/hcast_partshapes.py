"""H-CAST cast_tiny vs flat cast_tiny vs Hier-ViT-Tiny on PartShapes, compared at equal budgets.

Collects the training runs (per-epoch validation from each ``metrics.jsonl``, wall time from the run
folder) and the test evaluations (``python -m train evaluate ... --out DIR``: per-level top-1, FPA,
TICE and the segmentation metrics) into one results file, checks the issue's targets per budget
(H-CAST against the baselines trained for the same number of epochs), and writes the table into
``docs/taxonomy.md`` between its results markers. A budget whose baseline has no evaluation yet is
reported as such, never compared with another budget's.

Usage (after training and evaluating; see docs/taxonomy.md#results)::

    python benchmarks/hcast_partshapes.py --runs /work/runs --evals benchmarks/results/taxonomy \\
        [--out benchmarks/results/hcast_partshapes.json] [--doc docs/taxonomy.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HCAST, FLAT, VIT = "H-CAST cast_tiny", "flat cast_tiny", "Hier-ViT-Tiny"
MODELS = [  # (label, epochs of 6000 images, evaluation file stem, training run folder or None)
    (HCAST, 8, "hcast_tiny", "hcast_tiny"),
    (FLAT, 8, "cast_tiny", None),  # `bundled_flat`: trained with partshapes_cast_tiny.yaml
    (VIT, 8, "hier_vit_tiny", "hier_vit_tiny"),
    (HCAST, 24, "hcast_tiny_24ep", "hcast_tiny_long"),  # the default bundled model (`bundled`)
    (FLAT, 24, "cast_tiny_24ep", "cast_tiny_long"),
    (VIT, 24, "hier_vit_tiny_24ep", "hier_vit_tiny_long"),
]
START, END = "<!-- hcast-results:start -->", "<!-- hcast-results:end -->"


def run_summary(run: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    keep = ("top1", "top1_class", "top1_group", "fpa", "tice")
    # wall time over every sitting: recorded by the trainer since train_wall_s; before that only a run
    # that was never resumed tells it (its one sitting's wall_s)
    wall = None
    if epochs and "train_wall_s" in epochs[-1]:
        wall = epochs[-1]["train_wall_s"]
    elif epochs and not any(r.get("event") == "resume" for r in records):
        wall = epochs[-1]["wall_s"]
    return {"epochs": len(epochs), "wall_minutes": round(wall / 60, 1) if wall is not None else None,
            "resumed": sum(r.get("event") == "resume" for r in records),
            "val_per_epoch": [{k: round(r[k], 3) for k in keep if k in r} for r in epochs]}


def best_level(levels: dict[str, Any], key: str) -> tuple[float, str] | None:
    vals = [(v[key], lv) for lv, v in levels.items() if key in v]
    return max(vals) if vals else None


def row(label: str, epochs: int, ev: dict[str, Any]) -> str:
    tax = ev["taxonomy"]
    per_level = " / ".join(f"{v:.3f}" for v in tax["top1"])
    cells = [label, str(epochs), per_level, f"{tax['fpa']:.3f}", f"{tax['tice']:.3f}",
             f"{tax['fpa_consistent']:.3f}" if "fpa_consistent" in tax else "–"]
    for key in ("object_miou_oracle", "part_miou_oracle"):
        best = best_level(ev.get("levels", {}), key)
        cells.append(f"{best[0]:.3f} ({best[1]})" if best else "–")
    return "| " + " | ".join(cells) + " |"


def targets_at(evals: dict[tuple[str, int], dict[str, Any]], epochs: int) -> dict[str, Any]:
    """The issue's targets for the H-CAST run of this budget: [values, met], met None without a baseline."""
    h, flat, vit = (evals.get((label, epochs)) for label in (HCAST, FLAT, VIT))
    tax_h = h["taxonomy"]
    out: dict[str, Any] = {
        "fpa >= 0.90": [round(tax_h["fpa"], 3), tax_h["fpa"] >= 0.90],
        "tice <= 0.02": [round(tax_h["tice"], 3), tax_h["tice"] <= 0.02],
    }

    def versus(name: str, mine: float, theirs: float | None, margin: float) -> None:
        """Met when ``mine >= theirs + margin``; None (not judged) without the baseline's value."""
        if theirs is None:
            out[name] = [[round(mine, 3), None], None]
        else:
            out[name] = [[round(mine, 3), round(theirs, 3)], mine >= theirs + margin]

    versus("fine top-1 >= flat cast_tiny's", tax_h["top1"][0], flat["taxonomy"]["top1"][0] if flat else None, 0.0)
    versus("fpa >= Hier-ViT's + 0.10", tax_h["fpa"], vit["taxonomy"]["fpa"] if vit else None, 0.10)
    for key in ("part_miou_oracle", "object_miou_oracle"):
        mine, theirs = best_level(h.get("levels", {}), key), best_level(flat.get("levels", {}), key) if flat else None
        if mine:
            versus(f"{key} >= flat's - 0.02", mine[0], theirs[0] if theirs else None, -0.02)
    return out


def verdict(met: bool | None) -> str:
    return "met" if met else ("no baseline trained for this budget yet" if met is None else "**not met**")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="folder holding the run folders named in MODELS")
    ap.add_argument("--evals", default="benchmarks/results/taxonomy", help="folder of the evaluate JSON files")
    ap.add_argument("--out", default="benchmarks/results/hcast_partshapes.json")
    ap.add_argument("--doc", default="docs/taxonomy.md")
    args = ap.parse_args()
    evals = {(label, epochs): json.loads((Path(args.evals) / f"{stem}.json").read_text())
             for label, epochs, stem, _ in MODELS if (Path(args.evals) / f"{stem}.json").is_file()}
    if not evals:
        sys.exit(f"no evaluation files in {args.evals}; run `python -m train evaluate ... --out {args.evals}` first")
    runs = {run: run_summary(Path(args.runs) / run) for _, _, _, run in MODELS
            if run and (Path(args.runs) / run / "metrics.jsonl").is_file()}
    budgets = sorted({epochs for label, epochs in evals if label == HCAST})
    targets = {f"{epochs} epochs": targets_at(evals, epochs) for epochs in budgets}
    first = next(iter(evals.values()))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "data": first["data"],
              "images": first["images"], "levels": first["taxonomy"]["levels"], "runs": runs,
              "test": {f"{label}, {epochs} epochs": ev for (label, epochs), ev in evals.items()},
              "targets": targets}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    head = ("| model | epochs | top-1 per level (class / group) | FPA | TICE | FPA, consistent path "
            "| object mIoU oracle (level) | part mIoU oracle (level) |\n|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(row(label, epochs, evals[label, epochs]) for label, epochs, _, _ in MODELS
                             if (label, epochs) in evals)
    met = "\n\n".join(f"Targets, H-CAST cast_tiny at {budget}:\n\n"
                      + "\n".join(f"- {k}: {json.dumps(v[0])} — {verdict(v[1])}" for k, v in t.items())
                      for budget, t in targets.items())
    block = f"{START}\n{table}\n\n{met}\n{END}"
    doc = Path(args.doc)
    text = doc.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
        doc.write_text(text)
    print(table)
    print(met)
    return 0


if __name__ == "__main__":
    sys.exit(main())
