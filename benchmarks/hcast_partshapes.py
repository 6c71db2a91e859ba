"""H-CAST cast_tiny vs flat cast_tiny vs Hier-ViT-Tiny on PartShapes, at the same budget.

Collects the training runs (per-epoch validation from each ``metrics.jsonl``, wall time from the run
folder) and the test evaluations (``python -m train evaluate ... --out DIR``: per-level top-1, FPA,
TICE and the segmentation metrics) into one results file, checks the issue's targets, and writes the
table into ``docs/taxonomy.md`` between its results markers.

Usage (after training and evaluating; see docs/taxonomy.md#results)::

    python benchmarks/hcast_partshapes.py --runs /work/runs --evals benchmarks/results/taxonomy \\
        [--out benchmarks/results/hcast_partshapes.json] [--doc docs/taxonomy.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = [  # (label, evaluation file stem, training run folder name or None)
    ("H-CAST cast_tiny", "hcast_tiny", "hcast_tiny"),  # the default bundled model (`bundled`)
    ("flat cast_tiny", "cast_tiny", None),  # `bundled_flat`: trained with partshapes_cast_tiny.yaml
    ("Hier-ViT-Tiny", "hier_vit_tiny", "hier_vit_tiny"),
]
START, END = "<!-- hcast-results:start -->", "<!-- hcast-results:end -->"


def run_summary(run: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    keep = ("top1", "top1_class", "top1_group", "fpa", "tice")
    return {"epochs": len(epochs), "wall_minutes": round(epochs[-1]["wall_s"] / 60, 1) if epochs else None,
            "val_per_epoch": [{k: round(r[k], 3) for k in keep if k in r} for r in epochs]}


def best_level(levels: dict[str, Any], key: str) -> tuple[float, str] | None:
    vals = [(v[key], lv) for lv, v in levels.items() if key in v]
    return max(vals) if vals else None


def row(label: str, ev: dict[str, Any]) -> str:
    tax = ev["taxonomy"]
    per_level = " / ".join(f"{v:.3f}" for v in tax["top1"])
    cells = [label, per_level, f"{tax['fpa']:.3f}", f"{tax['tice']:.3f}",
             f"{tax['fpa_consistent']:.3f}" if "fpa_consistent" in tax else "–"]
    for key in ("object_miou_oracle", "part_miou_oracle"):
        best = best_level(ev.get("levels", {}), key)
        cells.append(f"{best[0]:.3f} ({best[1]})" if best else "–")
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="folder holding the hcast_tiny and hier_vit_tiny run folders")
    ap.add_argument("--evals", default="benchmarks/results/taxonomy", help="folder of the evaluate JSON files")
    ap.add_argument("--out", default="benchmarks/results/hcast_partshapes.json")
    ap.add_argument("--doc", default="docs/taxonomy.md")
    args = ap.parse_args()
    evals = {stem: json.loads((Path(args.evals) / f"{stem}.json").read_text()) for _, stem, _ in MODELS}
    runs = {run: run_summary(Path(args.runs) / run) for _, _, run in MODELS if run and (Path(args.runs) / run).is_dir()}
    h, flat, vit = (evals[stem] for _, stem, _ in MODELS)
    tax_h = h["taxonomy"]
    targets = {
        "fpa >= 0.90": [tax_h["fpa"], tax_h["fpa"] >= 0.90],
        "tice <= 0.02": [tax_h["tice"], tax_h["tice"] <= 0.02],
        "fine top-1 >= flat cast_tiny's": [[tax_h["top1"][0], flat["taxonomy"]["top1"][0]],
                                           tax_h["top1"][0] >= flat["taxonomy"]["top1"][0]],
        "fpa >= Hier-ViT's + 0.10": [[tax_h["fpa"], vit["taxonomy"]["fpa"]], tax_h["fpa"] >= vit["taxonomy"]["fpa"] + 0.10],
    }
    for key in ("part_miou_oracle", "object_miou_oracle"):
        mine, theirs = best_level(h["levels"], key), best_level(flat["levels"], key)
        if mine and theirs:
            targets[f"{key} >= flat's - 0.02"] = [[mine[0], theirs[0]], mine[0] >= theirs[0] - 0.02]
    result = {"machine": f"{platform.machine()}, 2 cores", "data": h["data"], "images": h["images"],
              "levels": tax_h["levels"], "runs": runs, "test": evals, "targets": targets}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    head = ("| model | top-1 per level (class / group) | FPA | TICE | FPA, consistent path | object mIoU oracle (level) "
            "| part mIoU oracle (level) |\n|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(row(label, evals[stem]) for label, stem, _ in MODELS)
    met = "\n".join(f"- {k}: {json.dumps(v[0])} — {'met' if v[1] else '**not met**'}" for k, v in targets.items())
    block = f"{START}\n{table}\n\nTargets (H-CAST cast_tiny):\n\n{met}\n{END}"
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
