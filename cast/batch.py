"""Pre-annotating a dataset: many images through one segmenter, into per-image folders and/or one
COCO and one Label Studio file, resumable and splittable into shards.

- Images are decoded, resized and given superpixels in DataLoader workers (``workers``) while the
  main process runs batched forward passes (``batch_size``) and writes the outputs.
- The image list is sorted and cut into fixed batches; shard ``i`` of ``n`` takes every ``n``-th
  batch. So a batch holds the same images whatever the sharding, and shards merged give exactly
  the file of one run (:func:`merge`).
- Each image's COCO / Label Studio entries are written as a small *part* file (atomically) in
  ``OUT/.parts`` before anything else; a batch whose images all have their parts is skipped, so a
  killed run continues where it stopped. ``OUT/coco.json``, ``OUT/labelstudio.json`` and
  ``OUT/labelstudio.xml`` are assembled from the parts at the end.
- Files that cannot be read are reported and recorded as failed; the rest go on.
- ``OUT/.parts/manifest.json`` records what the parts belong to (the input names in order and
  the model). A run or a merge on parts of another input list or model is refused with a
  :class:`BatchMismatchError` instead of mixing them (parts are numbered by input position).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CastError
from .exports import (
    EncodedTask,
    coco_record,
    labelstudio_record,
    write_coco_dataset,
    write_json,
    write_labelstudio,
    write_text,
)
from .segmenter import Segmenter

__all__ = ["BatchJob", "BatchMismatchError", "run", "merge", "inputs_of", "FORMATS", "parse_shard", "assemble",
           "file_name", "write_outputs", "write_status", "claim", "finish_job", "PARTS", "REPORT"]

FORMATS = ("json", "coco", "labelstudio")
PARTS = ".parts"
MANIFEST = "manifest.json"  # in PARTS: {"schema", "version", "names", "model"}
REPORT = "report.json"  # in OUT: this shard's inputs, done and failed (with the errors)
_MANIFEST_SCHEMA = "cast-batch"


class BatchMismatchError(CastError, ValueError):
    """An output folder holds parts of another input list or model than this run's or merge's."""

    default_short = "the output folder belongs to another run"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N, e.g. 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


@dataclass
class BatchJob:
    """What to run: the files (in a fixed order), their output names, where and how."""

    files: list[Path] | list[str]  # local paths (or, for the Ray engine, URIs such as s3://bucket/a.jpg)
    names: list[str]  # one output folder / record name per file
    out: Path
    formats: tuple[str, ...] = ("json",)
    batch_size: int = 8
    workers: int = 0  # DataLoader workers for decoding and superpixels (0: in this process)
    writers: int = 0  # processes building the trees and writing the outputs (0: in this process)
    shard: tuple[int, int] = (0, 1)
    segment_levels: tuple[int, ...] = ()  # levels whose segments also get masked-image recognition
    image_root: str = ""  # prefix of Label Studio's data.image (a URL or a local-files path)
    model: str = ""  # the model's name (a registry name, or a folder's name): recorded; a resume must use the same
    progress: bool = True
    failed: list[str] = field(default_factory=list)

    def batches(self) -> list[list[int]]:
        """This shard's batches of file indices."""
        every = [list(range(s, min(s + self.batch_size, len(self.files)))) for s in range(0, len(self.files), self.batch_size)]
        i, n = self.shard
        return every[i::n]

    def manifest(self) -> dict[str, Any]:
        return {"schema": _MANIFEST_SCHEMA, "version": 1, "names": list(self.names), "model": self.model}

    def part(self, index: int, fmt: str) -> Path:
        return self.out / PARTS / f"{index:08d}.{fmt}.json"

    def done(self, index: int) -> bool:
        status = self.out / PARTS / f"{index:08d}.status.json"
        if not status.is_file():
            return False
        if json.loads(status.read_text()).get("error"):
            return True
        wanted = [self.part(index, f) for f in self.formats if f != "json"]
        if "json" in self.formats:
            wanted.append(self.out / self.names[index] / "hierarchy.json")
        return all(p.is_file() for p in wanted)


class _Images:
    """The DataLoader's dataset: prepared images (or the error that stopped one)."""

    def __init__(self, job: BatchJob, segmenter: Segmenter) -> None:
        self.files, self.segmenter = job.files, segmenter

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Any, str]:
        try:
            return index, self.segmenter.prepare(self.files[index]), ""
        except CastError as e:
            return index, None, str(e)
        except MemoryError:
            return index, None, "out of memory"


def _loader(job: BatchJob, segmenter: Segmenter, todo: list[list[int]]) -> Iterator[list[tuple[int, Any, str]]]:
    if job.workers <= 0:
        images = _Images(job, segmenter)
        for batch in todo:
            yield [images[i] for i in batch]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_Images(job, segmenter), batch_sampler=todo, num_workers=job.workers, collate_fn=list,
                        prefetch_factor=2, multiprocessing_context=None if sys.platform == "win32" else "fork")
    yield from loader


def file_name(file: Path | str) -> str:
    """The last part of a path or URI (``s3://bucket/dir/a.jpg`` -> ``a.jpg``)."""
    return Path(file).name if isinstance(file, Path) else str(file).rstrip("/").rsplit("/", 1)[-1]


def write_outputs(job: BatchJob, segmenter: Segmenter, index: int, item: Any, readout: Any) -> None:
    """All outputs of one image under ``job.out`` (both engines write them so); the status file last
    (it marks the image as done). An image that cannot be finished is recorded as failed."""
    try:
        tree = segmenter.finish(item, readout)
        if job.segment_levels and segmenter.has_head:
            segmenter.predict_segments(tree, [n.key for n in tree.nodes if n.level in job.segment_levels])
        name = job.names[index]
        if "json" in job.formats:
            tree.save(job.out / name)
        if "coco" in job.formats:
            write_json(job.part(index, "coco"), coco_record(tree, file_name(job.files[index])))
        if "labelstudio" in job.formats:
            ref = f"{job.image_root.rstrip('/')}/{file_name(job.files[index])}" if job.image_root else file_name(job.files[index])
            write_text(job.part(index, "labelstudio"), EncodedTask.of(labelstudio_record(tree, ref)).dumps())
        error = ""
    except MemoryError:
        error = "out of memory"
    except (CastError, ValueError) as e:
        error = str(e)
    write_status(job, index, error)


def write_status(job: BatchJob, index: int, error: str) -> None:
    write_json(job.out / PARTS / f"{index:08d}.status.json", {"file": str(job.files[index]), "error": error})


_WRITER: tuple[BatchJob, Segmenter] | None = None  # what a writer process was forked with


def _writer_init(job: BatchJob, segmenter: Segmenter) -> None:
    global _WRITER
    import threading

    import torch

    torch.set_num_threads(1)
    _WRITER = (job, segmenter)
    parent = os.getppid()

    def watch() -> None:  # a killed CLI leaves no writer behind (the pool cannot tell it them)
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _writer_task(index: int, item: Any, readout: Any) -> int:
    assert _WRITER is not None
    write_outputs(*_WRITER, index, item, readout)
    return index


class _Writers:
    """Where finished readouts go: :func:`write_outputs` in this process, or a pool of forked writer
    processes with a bounded number of images in flight (so memory stays flat)."""

    def __init__(self, job: BatchJob, segmenter: Segmenter, bar: Any) -> None:
        self.job, self.segmenter, self.bar = job, segmenter, bar
        self.pool = None
        self.pending: deque[Future[int]] = deque()
        if job.writers > 0 and not job.segment_levels and sys.platform != "win32":  # segment recognition runs the model
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(job.writers, mp_context=mp.get_context("fork"), initializer=_writer_init,
                                            initargs=(job, segmenter))

    def submit(self, index: int, item: Any, readout: Any) -> None:
        if self.pool is None:
            write_outputs(self.job, self.segmenter, index, item, readout)
            self.bar.update(1)
            return
        self.pending.append(self.pool.submit(_writer_task, index, item, readout))
        while len(self.pending) > 2 * self.job.writers:
            self._collect()

    def _collect(self) -> None:
        self.pending.popleft().result()
        self.bar.update(1)

    def close(self) -> None:
        """Wait for the images in flight."""
        while self.pending:
            self._collect()
        if self.pool is not None:
            self.pool.shutdown()

    def abort(self) -> None:
        """Stop without waiting (interrupted): what was written stays, the rest is redone next run."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def run(job: BatchJob, segmenter: Segmenter) -> int:
    """Process this shard's images not done yet, then assemble the dataset files; returns the
    number of images segmented now (failures are in ``job.failed``)."""
    import torch
    from tqdm import tqdm

    (job.out / PARTS).mkdir(parents=True, exist_ok=True)
    claim(job.out, job.manifest())
    batches = job.batches()
    todo = [b for b in batches if not all(job.done(i) for i in b)]
    total = sum(len(b) for b in batches)
    bar = tqdm(total=total, initial=total - sum(len(b) for b in todo), unit="img", disable=not job.progress or None)
    count = 0
    writers = _Writers(job, segmenter, bar)
    try:
        with torch.inference_mode():
            for batch in _loader(job, segmenter, todo):
                ready = [(i, item) for i, item, err in batch if item is not None]
                for i, _, err in batch:
                    if err:
                        tqdm.write(f"skipped {job.files[i]}: {err}", file=sys.stderr)
                        write_status(job, i, err)
                        bar.update(1)
                if ready:
                    for (i, item), readout in zip(ready, segmenter.read_batch([item for _, item in ready])):
                        writers.submit(i, item, readout)
                        count += 1
        writers.close()
    except BaseException:
        writers.abort()
        raise
    finally:
        bar.close()
    finish_job(job)
    return count


def finish_job(job: BatchJob) -> None:
    """After a run (either engine): ``job.failed``, ``OUT/report.json`` (this shard's inputs, how
    many are done, and every failed input with its error) and the assembled dataset files."""
    indices = [i for b in job.batches() for i in b]
    failures = []
    for i in indices:
        path = job.out / PARTS / f"{i:08d}.status.json"
        error = json.loads(path.read_text()).get("error") if path.is_file() else "not processed"
        if error:
            failures.append({"file": str(job.files[i]), "error": error})
    job.failed = [f["file"] for f in failures]
    write_json(job.out / REPORT, {"schema": "cast-batch-report", "shard": list(job.shard), "inputs": len(indices),
                                  "done": len(indices) - len(failures), "failed": failures})
    assemble(job.out, job.formats)


def assemble(out: Path, formats: tuple[str, ...], parts_dirs: list[Path] | None = None) -> None:
    """Write ``coco.json`` / ``labelstudio.json`` + ``labelstudio.xml`` into ``out`` from the part
    files of ``parts_dirs`` (default: ``out``'s own), in file-index order."""
    dirs = parts_dirs or [out / PARTS]
    for fmt in ("coco", "labelstudio"):
        if fmt not in formats:
            continue
        found: dict[str, Path] = {}
        for d in dirs:
            for p in d.glob(f"*.{fmt}.json"):
                found.setdefault(p.name, p)  # the same image from two shards: the same record
        names = sorted(found)  # one record in memory at a time
        if fmt == "coco":
            write_coco_dataset(out / "coco.json", (json.loads(found[k].read_text()) for k in names))
        else:
            write_labelstudio(out / "labelstudio.json", out / "labelstudio.xml",
                              (EncodedTask.loads(found[k].read_text()) for k in names))


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / PARTS / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None  # parts written before manifests existed: nothing to compare
    except (OSError, ValueError) as e:
        raise BatchMismatchError(f"{path} is unreadable ({e}); use a new output folder") from None
    if not isinstance(doc, dict) or doc.get("schema") != _MANIFEST_SCHEMA:
        raise BatchMismatchError(f"{path} is not a manifest of `python -m cast segment`; use a new output folder")
    return doc


def inputs_of(out: Path) -> int | None:
    """How many inputs the run(s) behind an output folder had (None: not recorded)."""
    m = _read_manifest(Path(out))
    return None if m is None else len(m["names"])


def _mismatch(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two manifests ("" when they describe the same run)."""
    if a["names"] != b["names"]:
        gone, new = sorted(set(a["names"]) - set(b["names"])), sorted(set(b["names"]) - set(a["names"]))
        what = [f"{len(names)} inputs {verb} (e.g. {names[0]})" for names, verb in ((gone, "missing"), (new, "added")) if names]
        return f"another input list ({', '.join(what) or 'the same names in another order'})"
    if a.get("model") and b.get("model") and a["model"] != b["model"]:
        return f"another model ({a['model']!r}, not {b['model']!r})"
    return ""


def claim(out: Path, manifest: dict[str, Any]) -> None:
    """Record what ``out``'s parts belong to, or refuse when they belong to another run (parts are
    numbered by input position: mixing lists would give images each other's annotations)."""
    old = _read_manifest(out)
    if old is not None:
        why = _mismatch(old, manifest)
        if why:
            raise BatchMismatchError(f"{out} holds the results of {why}; use a new --out folder (or delete {out} "
                                     "to start over)", short="the output folder belongs to another run")
    write_json(out / PARTS / MANIFEST, manifest)


def merge(outputs: list[Path], out: Path) -> tuple[int, int]:
    """Combine the COCO / Label Studio files of shard outputs into ``out``; returns
    ``(images, formats)`` merged. The parts are copied too, so ``out`` can be merged again.

    Raises:
        FileNotFoundError: an output that ``python -m cast segment`` did not write.
        BatchMismatchError: outputs of different input lists or models.
    """
    dirs = [Path(o) / PARTS for o in outputs]
    missing = [str(d.parent) for d in dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"not outputs of `python -m cast segment` (no {PARTS} folder): {', '.join(missing)}")
    manifests = [(d.parent, m) for d in dirs if (m := _read_manifest(d.parent)) is not None]
    for folder, m in manifests[1:]:
        why = _mismatch(manifests[0][1], m)
        if why:
            raise BatchMismatchError(f"{folder} holds the results of {why} than {manifests[0][0]}: shards merge only "
                                     "when they were run on the same inputs with the same model")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    if manifests:
        claim(out, manifests[0][1])
    formats = tuple(f for f in ("coco", "labelstudio") if any(next(d.glob(f"*.{f}.json"), None) for d in dirs))
    for d in dirs:
        if d.resolve() == (out / PARTS).resolve():
            continue
        for p in d.iterdir():
            if p.name == MANIFEST:
                continue
            target = out / PARTS / p.name
            if not target.exists():
                target.write_bytes(p.read_bytes())
    assemble(out, formats)
    images = len({p.name.split(".")[0] for p in (out / PARTS).glob("*.status.json")})
    return images, len(formats)
