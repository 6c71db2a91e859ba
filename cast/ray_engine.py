"""``cast segment --engine ray``: pre-annotating datasets that outgrow one machine, as one Ray Data
streaming pipeline.

- Inputs: local paths or any URI pyarrow's filesystems read (``s3://``, ``gs://``, ``file://`` ...);
  the output folder likewise.
- The same batches as the local engine (:meth:`cast.batch.BatchJob.batches`: sorted inputs cut
  into fixed groups of ``batch_size``), so the same inputs, model and batch size give the same
  trees, ids and files (images in a batch share the padding of its forward pass).
- Stages: CPU tasks read, decode, resize and compute superpixels (one batch per task); an actor
  pool holds the model and runs the forward passes (on a GPU when the cluster has one,
  ``gpus_per_worker``); CPU tasks build and refine the trees and write every output of an image
  (written to a local staging folder by the local engine's own writer, then copied to the output
  folder, the status file last). Tasks and actors that die are retried by Ray (its defaults: a
  task's worker dying, 3 retries; the actor pool's actors restarted and their tasks retried); writes
  are whole files, so a retry rewrites what it had written.
- Resume and refusal follow the local engine's rules (``OUT/.parts``: an image whose status file is
  there is done; a manifest of another input list or model is refused). ``coco.json`` and
  ``labelstudio.json`` / ``.xml`` are assembled at the end by the same writers, in input order.

Ray is optional (``pip install "cast-explorer[ray]"``); the core never imports this module.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .batch import PARTS, REPORT, BatchJob, claim, finish_job, write_outputs, write_status
from .errors import CastError

__all__ = ["RaySettings", "run_ray", "list_inputs", "ray_available", "MISSING_RAY"]

MISSING_RAY = 'the Ray engine needs Ray: pip install "cast-explorer[ray]" (or pip install "ray[data]")'
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Where and how the pipeline runs."""

    address: str | None = None  # an existing cluster ("auto", "ray://host:10001", ...); None: start a local Ray
    model_workers: int = 1  # actors holding the model
    gpus_per_worker: float = 0.0  # GPUs per model actor (0: CPU)
    model_source: str = "bundled"  # what the driver loads (cast.load_model's sources) and ships to the actors
    device: str | None = None  # unused: the actors use a GPU when they are given one
    refine: bool = True
    taxonomy: str | None = None  # a taxonomy file for a hierarchical model's levels (read by the driver)


def ray_available() -> bool:
    """Whether Ray Data can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None
    except (ImportError, ValueError):
        return False


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CastError(MISSING_RAY, short="Ray is not installed") from None
    return ray


# ---------------------------------------------------------------------------------------------
# Files: local paths and URIs through pyarrow's filesystems
# ---------------------------------------------------------------------------------------------


def _fs(location: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path in it)`` of a local path or URI."""
    from pyarrow import fs

    if "://" in location:
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), str(Path(location).resolve())


def list_inputs(inputs: list[str], recursive: bool) -> tuple[list[str], list[str]]:
    """The image files among ``inputs`` (files, folders, URIs of either), each folder's sorted;
    and the inputs that do not exist."""
    from pyarrow import fs

    files: list[str] = []
    missing: list[str] = []
    for item in inputs:
        filesystem, path = _fs(item)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            files.append(item)
        elif info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
            paths = sorted(f.path for f in found if f.type == fs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES)
            prefix = item.split("://", 1)[0] + "://" if "://" in item else ""
            files += [prefix + p if prefix and not p.startswith(prefix) else p for p in paths]
        else:
            missing.append(item)
    return files, missing


def _read_bytes(location: str) -> bytes:
    filesystem, path = _fs(location)
    with filesystem.open_input_stream(path) as f:
        return f.readall()


def _copy_tree(local: Path, out: str, last: str) -> None:
    """Copy the files under ``local`` into ``out`` (path or URI), the file named ``last`` after
    every other (it marks the image as done)."""
    from pyarrow import fs

    filesystem, root = _fs(out)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == last)
    for p in files:
        target = f"{root.rstrip('/')}/{p.relative_to(local).as_posix()}"
        filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if isinstance(filesystem, fs.LocalFileSystem):  # a rename: readers never see half a file
            tmp = f"{target}.tmp{os.getpid()}"
            fs.copy_files(str(p), tmp, destination_filesystem=filesystem)
            filesystem.move(tmp, target)
        else:  # object stores make a put visible whole
            fs.copy_files(str(p), target, destination_filesystem=filesystem)


# ---------------------------------------------------------------------------------------------
# The pipeline's steps (module level: Ray ships them to its workers)
# ---------------------------------------------------------------------------------------------


def _prepare(row: dict[str, Any], *, job: BatchJob, segmenter: Any) -> dict[str, Any]:
    """CPU task: read and prepare one batch of images (decode, resize, superpixels); ``segmenter``
    is the weightless copy (:meth:`cast.Segmenter.without_weights`)."""
    ready, errors = [], []
    for index in row["indices"]:
        location = str(job.files[index])
        try:
            buf = io.BytesIO(_read_bytes(location))
            buf.name = location.rsplit("/", 1)[-1]  # error messages and the tree name the file, as locally
            ready.append((int(index), segmenter.prepare(buf)))
        except CastError as e:
            errors.append((int(index), str(e)))
        except OSError as e:
            errors.append((int(index), f"{buf.name if 'buf' in locals() else location}: cannot read ({e})"))
        except MemoryError:
            errors.append((int(index), "out of memory"))
    return {"batch": row["batch"], "payload": pickle.dumps((ready, errors))}


class _Forward:
    """Actor: holds the model (shipped once from the driver through Ray's object store), runs one
    batch's forward pass."""

    def __init__(self, model: list[Any], gpus: float) -> None:
        import ray
        import torch

        self.segmenter = ray.get(model[0])
        if gpus > 0 and torch.cuda.is_available():
            self.segmenter.to("cuda")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        payloads = []
        for payload in batch["payload"]:
            ready, errors = pickle.loads(payload)
            with torch.inference_mode():
                readouts = self.segmenter.read_batch([item for _, item in ready]) if ready else []
            payloads.append(pickle.dumps((ready, readouts, errors)))
        return {"batch": batch["batch"], "payload": payloads}


def _write(row: dict[str, Any], *, job: BatchJob, segmenter: Any, out: str) -> dict[str, Any]:
    """CPU task: build, refine and write every image of one batch; its statuses."""
    import torch

    torch.set_num_threads(1)
    ready, readouts, errors = pickle.loads(row["payload"])
    with tempfile.TemporaryDirectory(prefix="cast-ray-") as tmp:
        staged = dataclasses.replace(job, out=Path(tmp))
        (staged.out / PARTS).mkdir()
        for index, err in errors:
            write_status(staged, index, err)
        for (index, item), readout in zip(ready, readouts):
            write_outputs(staged, segmenter, index, item, readout)
        for index in sorted([i for i, _ in errors] + [i for i, _ in ready]):
            image = Path(tmp) / "image"
            shutil.rmtree(image, ignore_errors=True)
            (image / PARTS).mkdir(parents=True)
            for p in (staged.out / PARTS).glob(f"{index:08d}.*"):
                p.rename(image / PARTS / p.name)
            name = job.names[index]
            if (staged.out / name).is_dir():
                (staged.out / name).rename(image / name)
            _copy_tree(image, out, last=f"{index:08d}.status.json")
    return {"batch": row["batch"], "images": len(ready)}  # segmented now (as the local engine counts)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _init(ray: Any, settings: RaySettings) -> None:
    """Join ``settings.address`` or start a local Ray sized to the machine; workers import this
    package from where the driver does and see the Hub settings."""
    import cast

    package = Path(cast.__file__).resolve().parent
    if settings.address is None:  # the local instance's processes inherit this environment (no runtime env to set up)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:  # another machine: ship the package (cached by Ray by its hash) and the Hub settings
        env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "CAST_"))}
        ray.init(address=settings.address, runtime_env={"env_vars": env, "py_modules": [str(package)]},
                 log_to_driver=False, configure_logging=False)


def _local_mirror(out: str, work: Path) -> Path:
    """A local folder holding ``out``'s parts (``out`` itself when it is local)."""
    if "://" not in out:
        return Path(out)
    from pyarrow import fs

    filesystem, root = _fs(out)
    mirror = work / "out"
    (mirror / PARTS).mkdir(parents=True)
    if filesystem.get_file_info(root).type != fs.FileType.Directory:
        return mirror
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
        rel = info.path[len(root.rstrip("/")) + 1:]
        if info.type != fs.FileType.File:
            continue
        if rel.startswith(f"{PARTS}/"):  # the parts themselves (small)
            fs.copy_files(info.path, str(mirror / rel), source_filesystem=filesystem)
        elif rel.endswith("/hierarchy.json"):  # an image's folder is there: a stand-in says so
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            (mirror / rel).touch()
    return mirror


def run_ray(job: BatchJob, out: str, settings: RaySettings) -> int:
    """Run ``job`` (its ``out`` ignored: ``out`` is the output path or URI) on Ray; returns the
    number of images segmented now (failures are in ``job.failed``).

    Raises:
        CastError: Ray missing, or the model cannot be loaded. BatchMismatchError: ``out`` belongs
            to another run.
    """
    from .predictor import load_segmenter

    ray = import_ray()
    segmenter = load_segmenter(settings.model_source, device="cpu", refine=settings.refine,  # fails here, clearly
                               taxonomy=settings.taxonomy)
    given = job
    with tempfile.TemporaryDirectory(prefix="cast-ray-driver-") as tmp:
        local = _local_mirror(out, Path(tmp))
        (local / PARTS).mkdir(parents=True, exist_ok=True)
        job = dataclasses.replace(job, out=local)
        claim(local, job.manifest())
        if "://" in out:
            _copy_tree(local / PARTS, f"{out.rstrip('/')}/{PARTS}", last="")
        todo = [b for b in job.batches() if not all(job.done(i) for i in b)]
        count = _execute(ray, job, out, settings, todo, segmenter) if todo else 0
        if "://" in out:  # the parts written by the workers, back for assembling
            local = _local_mirror(out, Path(tmp) / "final")
            job = dataclasses.replace(job, out=local)
        finish_job(job)
        given.failed = job.failed
        if "://" in out:
            for name in ("coco.json", "labelstudio.json", "labelstudio.xml", REPORT):
                if (local / name).is_file():
                    _copy_tree_file(local / name, f"{out.rstrip('/')}/{name}")
    return count


def _copy_tree_file(path: Path, target: str) -> None:
    from pyarrow import fs

    filesystem, where = _fs(target)
    fs.copy_files(str(path), where, destination_filesystem=filesystem)


def _execute(ray: Any, job: BatchJob, out: str, settings: RaySettings, todo: list[list[int]], segmenter: Any) -> int:
    _init(ray, settings)
    try:
        model = [ray.put(segmenter)]  # once, for every model actor
        light = segmenter.without_weights()  # the settings, for the CPU tasks
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = job.progress
        if not job.progress:
            import logging

            logging.getLogger("ray.data").setLevel(logging.WARNING)
        rows = [{"batch": b, "indices": indices} for b, indices in enumerate(todo)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        # Retries are Ray's defaults: a task whose worker dies runs again (3 times), the actor pool's
        # actors are restarted and their tasks retried without limit.
        ds = ds.map(_prepare, fn_kwargs={"job": job, "segmenter": light}, num_cpus=0.5)
        ds = ds.map_batches(_Forward, fn_constructor_kwargs={"model": model, "gpus": settings.gpus_per_worker},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=max(1, settings.model_workers)),
                            num_gpus=settings.gpus_per_worker or None, num_cpus=0.25)  # mostly waits: the CPUs go to the tasks
        ds = ds.map(_write, fn_kwargs={"job": job, "segmenter": light, "out": out}, num_cpus=1)
        return sum(int(r["images"]) for r in ds.iter_rows())
    finally:
        ray.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m cast segment ... --engine ray")
