"""Command line: ``cast`` (the console script ``pip install`` puts on the PATH) or ``python -m cast``.

``python -m cast segment IMAGE_OR_DIR... --model SOURCE --out DIR [--format json,coco,labelstudio]``
writes one folder per image (``json``: ``hierarchy.json``, ``level1..4.png``, ``superpixels.png``)
and/or ``DIR/coco.json`` and ``DIR/labelstudio.json`` + ``labelstudio.xml`` for all images (label
maps at the photo's resolution with boundaries that follow it, ``--no-refine`` for nearest lookup).
It is resumable (images already done are skipped) and splits with ``--shard I/N``;
``python -m cast merge OUT1 OUT2 ... --out DIR`` combines the shards (:mod:`cast.batch`). Files that
cannot be read are reported by name and skipped; the exit code is 1 if any input failed, 2 if the
model could not be loaded or the arguments are wrong.
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


def _out_names(files: list[Path] | list[str]) -> list[str]:
    """One folder name per file: its stem, made unique when two inputs share a stem."""
    from .batch import file_name

    seen: dict[str, int] = {}
    names = []
    for f in files:
        stem = Path(file_name(f)).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(stem if n == 0 else f"{stem}_{n}")
    return names


def _inputs(args: argparse.Namespace) -> tuple[list[Path] | list[str], list[str]]:
    """The input images (local paths; for the Ray engine also URIs) and the inputs not found."""
    if args.engine == "ray":
        from .ray_engine import list_inputs

        return list_inputs(args.inputs, args.recursive)
    return _collect(args.inputs, args.recursive)


def _load_error(args: argparse.Namespace, e: Exception) -> int:
    """Report a model (or its taxonomy) that cannot be loaded; the exit code."""
    from .taxonomy import TaxonomyError

    if isinstance(e, TaxonomyError):
        print(f"error: the taxonomy {args.taxonomy!r} does not fit the model {args.model!r}: {e}", file=sys.stderr)
    else:
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
    return 2


def _run_engine(args: argparse.Namespace, job: object) -> int:
    """Run the job on the chosen engine; the images segmented now."""
    from . import load_segmenter
    from .batch import run

    if args.engine == "ray":
        from .ray_engine import RaySettings, run_ray

        settings = RaySettings(args.address, args.model_workers, args.gpus_per_worker, args.model, args.device,
                               not args.no_refine, args.taxonomy)
        return run_ray(job, args.out, settings)  # type: ignore[arg-type]
    segmenter = load_segmenter(args.model, device=args.device, refine=not args.no_refine, taxonomy=args.taxonomy)
    return run(job, segmenter)  # type: ignore[arg-type]


def cmd_segment(args: argparse.Namespace) -> int:
    import torch

    from . import CastError
    from .batch import FORMATS, BatchJob, BatchMismatchError, parse_shard
    from .taxonomy import TaxonomyError

    if args.threads:
        torch.set_num_threads(args.threads)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        print(f"error: --format takes a comma list of {', '.join(FORMATS)}; got {args.format!r}", file=sys.stderr)
        return 2
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        from .ray_engine import MISSING_RAY, ray_available

        if not ray_available():
            print(f"error: {MISSING_RAY}", file=sys.stderr)
            return 2
    files, missing = _inputs(args)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    if not files:
        print("error: no images found", file=sys.stderr)
        return 1
    levels = tuple(int(v) for v in args.segment_predictions.split(",") if v.strip()) if args.segment_predictions else ()
    job = BatchJob(files, _out_names(files), Path(args.out), formats, max(1, args.batch_size), max(0, args.workers),
                   max(0, args.writers), shard, levels, args.image_root,
                   model=Path(args.model).name if Path(args.model).exists() else args.model,  # a folder on any machine
                   progress=not args.quiet)
    try:
        done = _run_engine(args, job)
    except BatchMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TaxonomyError, CastError) as e:
        return _load_error(args, e)
    mine = sum(len(b) for b in job.batches())
    print(f"{done} segmented now, {mine - len(job.failed)} of {mine} inputs of this shard done in {args.out}"
          + (f" (shard {shard[0]}/{shard[1]} of {len(files)})" if shard[1] > 1 else ""), file=sys.stderr)
    failed = [*missing, *job.failed]
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .batch import BatchMismatchError, inputs_of, merge

    try:
        images, formats = merge([Path(o) for o in args.outputs], Path(args.out))
    except (FileNotFoundError, BatchMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {images} images ({formats} formats) into {args.out}", file=sys.stderr)
    expected = inputs_of(Path(args.out))
    if expected is not None and images < expected:
        print(f"warning: {expected - images} of the {expected} inputs are in none of these outputs (a shard not run, "
              "not finished or not given to merge?)", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import PUBLISHED
    from .models.hub_mixin import has_weights
    from .weights import BUNDLED_MODELS, bundled_dir

    print(f"{'name':32} {'family':8} {'trained on':32} {'paper result':36} download")
    for w in PUBLISHED.values():
        print(f"{w.name:32} {w.family:8} {w.dataset:32} {w.result or '(no figure in the paper)':36} {w.size_hint}")
    for name in BUNDLED_MODELS:
        state = "installed" if has_weights(bundled_dir(name)) else "not installed"
        print(f"{name:32} {'':8} {str(bundled_dir(name)):32} ({state})")
    return 0


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        levels = ()
    if not levels or any(lv not in (1, 2, 3, 4) for lv in levels):
        raise argparse.ArgumentTypeError(f"levels are a comma list of 1 (finest) to 4 (coarsest), got {text!r}")
    return levels


def cmd_serve_labelstudio(args: argparse.Namespace) -> int:
    import logging
    import os

    from . import CastError
    from .labelstudio import create_server, fetch_settings_from_env
    from .taxonomy import TaxonomyError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    auth = args.basic_auth or (f"{os.environ['BASIC_AUTH_USER']}:{os.environ.get('BASIC_AUTH_PASS', '')}"
                               if os.environ.get("BASIC_AUTH_USER") else None)
    if auth is not None and ":" not in auth:
        print("error: --basic-auth takes USER:PASSWORD", file=sys.stderr)
        return 2
    fetch = fetch_settings_from_env(label_studio_url=args.label_studio_url, api_key=args.api_key,
                                    allowed_hosts=tuple(h.strip() for h in args.allow_hosts.split(",") if h.strip()) or None,
                                    local_root=args.local_files, max_bytes=int(args.max_image_mb * 2**20),
                                    timeout=args.fetch_timeout)
    try:
        server = create_server(args.model, args.host, args.port, args.levels,
                               tuple(auth.split(":", 1)) if auth else None,  # type: ignore[arg-type]
                               fetch, args.cache, args.device, not args.no_refine, taxonomy=args.taxonomy)
    except (TaxonomyError, CastError) as e:
        return _load_error(args, e)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"CAST backend for Label Studio at {server.url} (model {server.backend.model_version}, levels "
          f"{','.join(map(str, args.levels))}{', basic auth' if auth else ''}); in Label Studio: Settings -> Model -> "
          f"Connect model -> {server.url}", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def cmd_labelstudio_config(args: argparse.Namespace) -> int:
    from .labelstudio.config import labeling_config

    labels = [v.strip() for v in args.labels.split(",") if v.strip()]
    sys.stdout.write(labeling_config(args.levels, labels))
    return 0


def main(argv: list[str] | None = None) -> int:
    # the same parser behind `cast` (the installed console script) and `python -m cast`
    prog = "cast" if Path(sys.argv[0]).name == "cast" else "python -m cast"
    parser = argparse.ArgumentParser(prog=prog, description="CAST Explorer model library")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment images into part-to-whole hierarchies")
    seg.add_argument("inputs", nargs="+", help="image files and/or folders")
    seg.add_argument("--model", default="bundled", help="published name, 'bundled', a file, a folder or a Hub repo id")
    seg.add_argument("--taxonomy", default=None, metavar="FILE",
                     help="hierarchical (H-CAST) models: JSON with the class names per level and each class's parent")
    seg.add_argument("--out", required=True, help="output folder (one sub-folder per image)")
    seg.add_argument("--recursive", action="store_true", help="also look inside sub-folders")
    seg.add_argument("--segment-predictions", default="", metavar="LEVELS",
                     help="comma-separated levels (e.g. 3,4) whose segments get masked-image recognition")
    seg.add_argument("--format", default="json", help="comma list: json (one folder per image), coco (OUT/coco.json), "
                     "labelstudio (OUT/labelstudio.json + .xml)")
    seg.add_argument("--shard", default="0/1", metavar="I/N", help="process the I-th of N parts (merge them with `merge`)")
    seg.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    seg.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images and computing superpixels")
    seg.add_argument("--writers", type=int, default=2,
                     help="processes that build the trees and write the outputs while the next batch runs (0: none)")
    seg.add_argument("--image-root", default="", help="prefix of Label Studio's data.image (e.g. /data/local-files/?d=photos)")
    seg.add_argument("--no-refine", action="store_true",
                     help="label maps carried from the model's size by nearest lookup (no boundary refinement)")
    seg.add_argument("--device", default=None, help="torch device (default cpu)")
    seg.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this machine's processes; ray: a Ray Data pipeline (pip install \"cast-explorer[ray]\")")
    seg.add_argument("--address", default=None, help="Ray: the cluster to join (default: start a local Ray sized to the machine)")
    seg.add_argument("--model-workers", type=int, default=1, help="Ray: actors holding the model")
    seg.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray: GPUs per model actor (0: CPU)")
    seg.set_defaults(func=cmd_segment)
    mg = sub.add_parser("merge", help="combine the COCO / Label Studio files of --shard outputs")
    mg.add_argument("outputs", nargs="+", help="output folders of `segment` runs")
    mg.add_argument("--out", required=True)
    mg.set_defaults(func=cmd_merge)
    models = sub.add_parser("models", help="list the published and bundled models")
    models.set_defaults(func=cmd_models)
    ls = sub.add_parser("serve-labelstudio", help="serve a model to Label Studio (its ML backend protocol)")
    ls.add_argument("--model", default="bundled", help="published name, 'bundled', a file, a folder or a Hub repo id")
    ls.add_argument("--taxonomy", default=None, metavar="FILE",
                    help="hierarchical (H-CAST) models: JSON with the class names per level and each class's parent")
    ls.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ls.add_argument("--port", type=int, default=9090)
    ls.add_argument("--levels", type=_levels, default=(1, 2, 3, 4), help="tree levels pre-annotated, e.g. 3,4")
    ls.add_argument("--label-studio-url", default=None, help="where task images are fetched from (default $LABEL_STUDIO_URL)")
    ls.add_argument("--api-key", default=None, help="Label Studio legacy or personal access token (default $LABEL_STUDIO_API_KEY)")
    ls.add_argument("--allow-hosts", default="", help="comma list of other hosts images may be fetched from "
                    "(default $CAST_LS_ALLOWED_HOSTS)")
    ls.add_argument("--local-files", default=None, metavar="DIR", help="allow task images given as local paths inside DIR")
    ls.add_argument("--max-image-mb", type=float, default=50.0, help="largest image file fetched")
    ls.add_argument("--fetch-timeout", type=float, default=30.0, help="seconds to fetch one image")
    ls.add_argument("--basic-auth", default=None, metavar="USER:PASSWORD",
                    help="require HTTP basic auth (default $BASIC_AUTH_USER / $BASIC_AUTH_PASS when set)")
    ls.add_argument("--cache", type=int, default=32, help="trees kept for smart-tool prompts")
    ls.add_argument("--no-refine", action="store_true", help="masks carried from the model's size by nearest lookup")
    ls.add_argument("--device", default=None, help="torch device (default cpu)")
    ls.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ls.set_defaults(func=cmd_serve_labelstudio)
    lc = sub.add_parser("labelstudio-config", help="print a Label Studio labeling config for the backend")
    lc.add_argument("--levels", type=_levels, default=(1, 2, 3, 4), help="tree levels (granularities) offered")
    lc.add_argument("--labels", default="", help="comma list of brush labels (default: one per level: whole, part, ...)")
    lc.set_defaults(func=cmd_labelstudio_config)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
