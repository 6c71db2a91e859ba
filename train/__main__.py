"""``python -m train``: fit, export, and PartShapes tools.

    python -m train fit --config train/configs/partshapes_cast_tiny.yaml [--set key=value ...] [--resume auto]
    torchrun --nproc_per_node 2 -m train fit --config ...
    python -m train export RUN_DIR --out DIR [--push-to-hub REPO_ID]
    python -m train partshapes export --out DIR --n 1000 [--split test]
"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_fit(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        from .config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return 0
    from .engine import fit

    summary = fit(cfg, resume=args.resume)
    if summary and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cast import CastError

    from .export import ExportError, export_run

    try:
        out = export_run(args.run_dir, args.out, which=args.which, use_ema=args.ema, push_to_hub=args.push_to_hub,
                         private=args.private, half=args.half)
    except (ExportError, CastError, FileNotFoundError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    print(f"exported {args.run_dir} -> {out}" + (f" (pushed to {args.push_to_hub})" if args.push_to_hub else ""))
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from cast import CastError

    from .concepts_eval import run

    try:
        results = run(args.model, args.data, args.ref, args.out, image_size=args.image_size)
        if args.doc:
            from .concepts_eval import write_readme

            write_readme(results, args.doc, args.eval_dir)
    except (CastError, FileNotFoundError) as e:
        print(f"concepts failed: {e}", file=sys.stderr)
        return 1
    return 0


def _is_training_run(model: str) -> bool:
    from pathlib import Path

    p = Path(model)
    return (p.is_dir() and (p / "config.yaml").is_file() and any((p / n).is_file() for n in ("best.pt", "last.pt"))) or (
        p.is_file() and p.suffix == ".pt")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cast import CastError

    from .evaluate import evaluate, format_table, load_eval_data

    try:
        data = load_eval_data(args.data, n=args.n, image_size=args.image_size)
        ref = load_eval_data(args.ref, n=args.ref_n, image_size=args.image_size) if args.ref else None
        if _is_training_run(args.model):  # a run with no CAST Explorer format (Hier-ViT): taxonomy metrics only
            from .evaluate import evaluate_run

            result = evaluate_run(args.model, data)
        else:
            result = evaluate(args.model, data, model_label_n=args.model_label_n, ref=ref, ref_n=args.ref_n,
                              taxonomy=args.taxonomy)
    except (CastError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"evaluate failed: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = args.name or Path(str(args.model)).name
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / (name + '.json')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    write_report(args.results, args.doc, args.figures, data=args.data, models=args.gallery_models)
    return 0


def cmd_partshapes_export(args: argparse.Namespace) -> int:
    from .data.partshapes import export

    out = export(args.out, split=args.split, n=args.n, image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.n} {args.split} images to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train", description="Train, evaluate and export CAST models")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a model (single process or under torchrun)")
    f.add_argument("--config", required=True, help="YAML file (see train/configs/)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. optim.base_lr=1e-3")
    f.add_argument("--resume", default=None, help="'auto' (continue RUN_DIR/last.pt if present) or a checkpoint path")
    f.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("export", help="export a run to config.json + model.safetensors")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True)
    e.add_argument("--which", default="best", choices=["best", "last"])
    e.add_argument("--ema", action="store_true", help="export the EMA weights")
    e.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    e.add_argument("--private", action="store_true")
    e.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    e.set_defaults(func=cmd_export)

    ev = sub.add_parser("evaluate", help="hierarchical part/object segmentation metrics of a model")
    ev.add_argument("--model", required=True, help="anything cast.load_model accepts (CAST, H-CAST or a ViT baseline), "
                    "or a Hier-ViT training run folder (taxonomy metrics only)")
    ev.add_argument("--data", default="partshapes:test", help="partshapes:SPLIT[:N] or a folder in the export layout")
    ev.add_argument("--n", type=int, default=None, help="images to evaluate (default: all / 500 rendered)")
    ev.add_argument("--size", "--image-size", dest="image_size", type=int, default=160,
                    help="PartShapes rendering size; above the model's size both the refined and the nearest maps are scored")
    ev.add_argument("--model-label-n", type=int, default=50, help="images for protocol (ii), model labelling")
    ev.add_argument("--ref", default="partshapes:train", help="reference split for part prototypes ('' to skip)")
    ev.add_argument("--ref-n", type=int, default=100)
    ev.add_argument("--taxonomy", default=None, metavar="FILE",
                    help="class names per level and parents, for per-level top-1, FPA and TICE (H-CAST)")
    ev.add_argument("--out", default=None, help="folder for the JSON results")
    ev.add_argument("--name", default=None, help="results file name (default: model folder name)")
    ev.set_defaults(func=cmd_evaluate)

    ce = sub.add_parser("concepts", help="k-NN / linear top-1 and concept purity of self-supervised models (HIRL)")
    ce.add_argument("--model", action="append", required=True, help="model folder (repeat to compare)")
    ce.add_argument("--data", default="partshapes:test:500", help="evaluation images")
    ce.add_argument("--ref", default="partshapes:train:1000", help="reference images (k-NN bank, probe training)")
    ce.add_argument("--image-size", type=int, default=160)
    ce.add_argument("--out", default=None, help="folder for one JSON file per model")
    ce.add_argument("--doc", "--readme", dest="doc", default=None,
                    help="write the table into this page's hirl block (docs/concepts.md)")
    ce.add_argument("--eval-dir", default="benchmarks/results/eval", help="evaluate JSON files (mIoU) for the table")
    ce.set_defaults(func=cmd_concepts)

    rp = sub.add_parser("report", help="results table and figures into docs/evaluation.md's Results section")
    rp.add_argument("--results", default="benchmarks/results/eval", help="folder of evaluate JSON files")
    rp.add_argument("--doc", "--readme", dest="doc", default="docs/evaluation.md",
                    help="the page whose results block is rewritten")
    rp.add_argument("--figures", default="docs/figures")
    rp.add_argument("--data", default="partshapes:test")
    rp.add_argument("--gallery-models", nargs="*", default=None, help="model sources for the gallery figure")
    rp.set_defaults(func=cmd_report)

    ps = sub.add_parser("partshapes", help="the synthetic PartShapes dataset")
    ps_sub = ps.add_subparsers(dest="partshapes_command", required=True)
    pe = ps_sub.add_parser("export", help="write an ImageFolder with part/object mask PNGs")
    pe.add_argument("--out", required=True)
    pe.add_argument("--n", type=int, default=1000)
    pe.add_argument("--split", default="test", choices=["train", "val", "test"])
    pe.add_argument("--image-size", type=int, default=128)
    pe.add_argument("--seed", type=int, default=None)
    pe.set_defaults(func=cmd_partshapes_export)

    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
