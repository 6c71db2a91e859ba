"""Command line: ``python -m cast segment IMAGE_OR_DIR... --model SOURCE --out DIR``.

Writes one folder per image (``hierarchy.json``, ``level1..4.png``, ``superpixels.png``; label maps
at the photo's resolution with boundaries that follow it, ``--no-refine`` for nearest lookup). Files
that cannot be read are reported by name and skipped; the exit code is 1 if any input failed,
2 if the model could not be loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _collect(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            files += sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            missing.append(item)
    return files, missing


def _out_names(files: list[Path]) -> list[str]:
    """One folder name per file: its stem, made unique when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        names.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return names


def cmd_segment(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from . import CastError, load_segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    files, missing = _collect(args.inputs, args.recursive)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    if not files:
        print("error: no images found", file=sys.stderr)
        return 1
    try:
        predictor = load_segmenter(args.model, device=args.device, refine=not args.no_refine)
    except CastError as e:
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = list(missing)
    bar = tqdm(list(zip(files, _out_names(files))), unit="img", disable=args.quiet or None)
    for f, name in bar:
        bar.set_postfix_str(f.name[-30:])
        try:
            tree = predictor(f)
            if args.segment_predictions and predictor.has_head:
                levels = [int(v) for v in args.segment_predictions.split(",")]
                predictor.predict_segments(tree, [n.key for n in tree.nodes if n.level in levels])
            tree.save(out / name)
        except CastError as e:
            failed.append(str(f))
            tqdm.write(f"skipped {f}: {e}", file=sys.stderr)
        except MemoryError:
            failed.append(str(f))
            tqdm.write(f"skipped {f}: out of memory", file=sys.stderr)
    done = len(files) - (len(failed) - len(missing))
    print(f"{done} of {len(files) + len(missing)} inputs segmented into {out}", file=sys.stderr)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import PUBLISHED
    from .models.hub_mixin import has_weights
    from .weights import BUNDLED_MODELS, bundled_dir

    print(f"{'name':32} {'family':8} {'trained on':32} result")
    for w in PUBLISHED.values():
        print(f"{w.name:32} {w.family:8} {w.dataset:32} {w.result}")
    for name in BUNDLED_MODELS:
        state = "installed" if has_weights(bundled_dir(name)) else "not installed"
        print(f"{name:32} {'':8} {str(bundled_dir(name)):32} ({state})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cast", description="CAST Explorer model library")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment images into part-to-whole hierarchies")
    seg.add_argument("inputs", nargs="+", help="image files and/or folders")
    seg.add_argument("--model", default="bundled", help="published name, 'bundled', a file, a folder or a Hub repo id")
    seg.add_argument("--out", required=True, help="output folder (one sub-folder per image)")
    seg.add_argument("--recursive", action="store_true", help="also look inside sub-folders")
    seg.add_argument("--segment-predictions", default="", metavar="LEVELS",
                     help="comma-separated levels (e.g. 3,4) whose segments get masked-image recognition")
    seg.add_argument("--no-refine", action="store_true",
                     help="label maps carried from the model's size by nearest lookup (no boundary refinement)")
    seg.add_argument("--device", default=None, help="torch device (default cpu)")
    seg.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)
    models = sub.add_parser("models", help="list the published and bundled models")
    models.set_defaults(func=cmd_models)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
