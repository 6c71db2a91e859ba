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
                         private=args.private)
    except (ExportError, CastError, FileNotFoundError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    print(f"exported {args.run_dir} -> {out}" + (f" (pushed to {args.push_to_hub})" if args.push_to_hub else ""))
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
    e.set_defaults(func=cmd_export)

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
