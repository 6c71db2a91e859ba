"""Everything the app does that is not UI: which models exist, loading and caching them, segmenting
uploads (with a result cache), and writing the downloads. Gradio is not imported here."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cast import BUNDLED, PUBLISHED, CastLoadError, Hierarchy, Level, Segmenter, SegmentKey, hub, load_segmenter
from cast.annotations import Annotations
from cast.exports import coco_dataset, coco_record, labelstudio_config, labelstudio_record, labelstudio_tasks, write_json
from cast.image import ImageInput
from cast.models.hub_mixin import has_weights
from cast.weights import BASELINE_FOR, BUNDLED_CONCEPTS, BUNDLED_FLAT, bundled_dir

from .autosave import AutosaveStore
from .config import AppConfig, model_device
from .sessions import SessionRegistry, trim_memory

log = logging.getLogger("cast_explorer")

__all__ = ["ModelChoice", "ModelStore", "Result", "Explorer", "StartupModel", "example_files", "write_export",
           "display_maps", "DisplayMaps"]


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model selector."""

    name: str  # what cast.load_model receives
    label: str  # what people read
    kind: str  # "published", "bundled" or "folder"


class _LRU:
    """A small thread-safe least-recently-used map, bounded by entries and optionally by a total
    weight (the newest entry is always kept); entries unused for a while can be dropped (:meth:`expire`)."""

    def __init__(self, size: int, max_weight: float = float("inf")) -> None:
        self.size = max(1, size)
        self.max_weight = max_weight
        self._d: OrderedDict[Any, tuple[Any, float, float]] = OrderedDict()  # key -> (value, weight, last use)
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._d:
                return None
            value, weight, _ = self._d[key]
            self._d[key] = (value, weight, time.monotonic())
            self._d.move_to_end(key)
            return value

    def put(self, key: Any, value: Any, weight: float = 0.0) -> None:
        with self._lock:
            self._d[key] = (value, weight, time.monotonic())
            self._d.move_to_end(key)
            while len(self._d) > 1 and (len(self._d) > self.size or sum(w for _, w, _ in self._d.values()) > self.max_weight):
                self._d.popitem(last=False)

    def expire(self, age: float) -> int:
        """Drop the entries unused for ``age`` seconds (the oldest come first); returns how many."""
        cutoff, dropped = time.monotonic() - age, 0
        with self._lock:
            while self._d and next(iter(self._d.values()))[2] < cutoff:
                self._d.popitem(last=False)
                dropped += 1
        return dropped

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._d)

    def pop(self, key: Any) -> Any:
        with self._lock:
            entry = self._d.pop(key, None)
            return None if entry is None else entry[0]


class ModelStore:
    """The models the app offers and a bounded cache of loaded ones.

    Loading is serialised per model (two sessions asking for the same model load it once) but not
    across models, so one person's slow download never holds up requests for a model already loaded.
    """

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self._cache = _LRU(cfg.max_models)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._choices: list[ModelChoice] | None = None

    # -- what exists ---------------------------------------------------------------------
    def choices(self, refresh: bool = False) -> list[ModelChoice]:
        """The selector's entries; the models folder is scanned once (and again on ``refresh``)."""
        if self._choices is None or refresh:
            self._choices = self._scan()
        return self._choices

    def _scan(self) -> list[ModelChoice]:
        out = [ModelChoice(BUNDLED, "bundled: H-CAST cast_tiny, class and group heads, PartShapes, 24-epoch run (offline)", "bundled")]
        if (bundled_dir(BUNDLED_FLAT) / "config.json").is_file():
            out.append(ModelChoice(BUNDLED_FLAT, "bundled_flat: cast_tiny, one head, PartShapes, 8-epoch run (offline)", "bundled"))
        if (bundled_dir(BUNDLED_CONCEPTS) / "concepts.json").is_file():
            out.append(ModelChoice(BUNDLED_CONCEPTS, "bundled_hirl: cast_tiny + HIRL concepts, PartShapes, self-supervised (offline)",
                                   "bundled"))
        for name, w in PUBLISHED.items():
            if w.arch.startswith("cast"):
                what = ", ".join(part for part in (w.dataset, w.result) if part)
                out.append(ModelChoice(name, f"{name}: {what} ({w.size_hint})", "published"))
        for folder in self._model_folders():
            out.append(ModelChoice(str(folder), f"folder: {folder.name}", "folder"))
        for src in self.cfg.extra_models:
            out.append(ModelChoice(src, f"extra: {src}", "folder"))
        return out

    def _model_folders(self) -> list[Path]:
        root = Path(self.cfg.models_dir)
        if not root.is_dir():
            return []
        found = []
        for config in sorted(root.glob("*/config.json")):
            try:
                arch = str(json.loads(config.read_text()).get("architecture", ""))
            except (OSError, ValueError):
                continue
            if arch.startswith(("cast", "hcast")) and has_weights(config.parent):
                found.append(config.parent.resolve())
        return found

    def known(self, name: str) -> bool:
        """Whether ``name`` is offered (a folder added since the last scan is found by a rescan)."""
        return any(c.name == name for c in self.choices()) or any(c.name == name for c in self.choices(refresh=True))

    def available_locally(self, name: str) -> bool:
        """Whether ``name`` loads without the network: bundled, a local folder, or in the Hub cache."""
        if name in PUBLISHED:
            w = PUBLISHED[name]
            return hub.is_cached(w.hub_repo, w.hub_file)
        if Path(name).exists() or name in (BUNDLED, BUNDLED_CONCEPTS, BUNDLED_FLAT):
            return True
        return name.count("/") == 1 and hub.is_cached(name, "config.json")

    def label(self, name: str) -> str:
        return next((c.label for c in self.choices() if c.name == name), name)

    # -- loading -------------------------------------------------------------------------
    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        with self._lock_for(name):
            hit = self._cache.get(name)
            if hit is None:
                hit = build()
                self._cache.put(name, hit)
            return hit

    def segmenter(self, name: str) -> Segmenter:
        """The loaded segmenter of a listed model or of a listed model's ViT baseline
        (:func:`cast.load_segmenter`: a :class:`cast.Predictor` for CAST).

        Raises:
            CastLoadError: not listed, not available (offline), or not loadable; the message says why.
        """
        if not self.known(name) and name not in BASELINE_FOR.values():
            raise CastLoadError(f"unknown model {name!r}", short="not one of the models offered here")

        def build() -> Segmenter:
            log.info("loading model %s", name)
            return load_segmenter(name, device=model_device(self.cfg.device), top_k=5)

        return self._get(name, build)

    def baseline_name(self, name: str) -> str | None:
        return BASELINE_FOR.get(name)

    def baseline(self, name: str) -> Segmenter:
        """The ViT + k-means segmenter the model ``name`` is compared with.

        Raises:
            CastLoadError: no baseline for this model, or it cannot be loaded.
        """
        vit_name = self.baseline_name(name)
        if vit_name is None:
            raise CastLoadError(f"no ViT baseline is known for {name}", short="no ViT baseline for this model")
        return self.segmenter(vit_name)

    def loaded(self) -> list[str]:
        """The models in memory (baselines not counted)."""
        return [k for k in self._cache.keys() if k not in BASELINE_FOR.values()]


class DisplayMaps(Mapping[Level, np.ndarray]):
    """A photo's label maps at display size, by display level: ``maps[Level.L2]`` is ``[h, w]``.
    Level 1 and the superpixels are stored (~3 bytes per display pixel); a coarser level is looked
    up through the parent tables when first asked (~1 ms per level) and kept until
    :meth:`drop_caches` (the session registry drops them for idle sessions); the whole image is zeros."""

    def __init__(self, level1: np.ndarray, superpixels: np.ndarray, parents: list[np.ndarray]) -> None:
        self.level1, self.superpixels = level1, superpixels
        self._parents = [p.astype(level1.dtype) for p in parents]  # ids fit the level-1 map's type
        self._levels: dict[Level, np.ndarray] = {}

    def drop_caches(self) -> None:
        self._levels = {}

    @classmethod
    def empty(cls) -> DisplayMaps:
        return cls(np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint16), [])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.level1.shape[0]), int(self.level1.shape[1])

    @property
    def nbytes(self) -> int:
        cached = sum(m.nbytes for m in list(self._levels.values()))
        return int(self.level1.nbytes + self.superpixels.nbytes + sum(p.nbytes for p in self._parents) + cached)

    def __getitem__(self, level: Level) -> np.ndarray:
        level = Level(int(level))
        if level == Level.SUPERPIXEL:
            return self.superpixels
        if level == Level.WHOLE:
            return np.zeros(self.shape, np.uint8)
        if int(level) > len(self._parents) + 1:
            raise KeyError(level)
        if level == Level.L1:
            return self.level1
        m = self._levels.get(level)
        if m is None:
            m = self.level1
            for p in self._parents[: int(level) - 1]:
                m = np.take(p, m)
            self._levels[level] = m
        return m

    def __iter__(self) -> Iterator[Level]:
        return iter([Level.WHOLE, *(Level(lv) for lv in range(1, len(self._parents) + 2)), Level.SUPERPIXEL])

    def __len__(self) -> int:
        return len(self._parents) + 3


def display_maps(tree: Hierarchy, size: tuple[int, int]) -> DisplayMaps:
    """Label maps at display size ``(w, h)`` for every display level, by nearest-pixel lookup of
    the full-size maps (made from the tree's compact maps directly)."""
    levels, sp = tree.maps.resized(size)
    return DisplayMaps(levels[0], sp, tree.parents)


@dataclass
class Result:
    """One segmented image and its downloads (shared by every session that shows it). In memory:
    the display-size photo and maps and the working-size tree; the full-size label maps are in
    ``folder/maps.npz`` (:meth:`cast.Hierarchy.offload`), read only while writing an export."""

    tree: Hierarchy
    model: str
    photo: np.ndarray  # [h, w, 3] uint8, the input at display size
    folder: Path  # hierarchy.json, labels.zip, maps.npz
    maps: DisplayMaps | None = None  # display-size label maps (display_maps), read-only, shared by sessions
    sha1: str = ""  # of the uploaded file
    baseline: Hierarchy | None = None  # the ViT + k-means tree, once computed
    concept_thumbnails: dict[tuple[int, int], list[str]] | None = None  # (concept level, id) -> image files (HIRL models)

    def __post_init__(self) -> None:
        if self.maps is None:
            h, w = self.photo.shape[:2]
            self.maps = display_maps(self.tree, (w, h))

    @property
    def nbytes(self) -> int:
        """Memory held (bytes): photo, display maps, trees."""
        maps = self.maps.nbytes if self.maps is not None else 0
        baseline = self.baseline.nbytes if self.baseline is not None else 0
        return int(self.photo.nbytes + maps + self.tree.nbytes + baseline)

    @property
    def json_path(self) -> Path:
        return self.folder / "hierarchy.json"

    @property
    def labels_path(self) -> Path:
        return self.folder / "labels.zip"

    def write_json(self) -> Path:
        """Rewrite ``hierarchy.json`` (after on-demand segment predictions were added)."""
        self.folder.mkdir(parents=True, exist_ok=True)  # the disk cache may have removed it
        tmp = self.json_path.with_suffix(f".{uuid.uuid4().hex}.tmp")  # sessions may share this result
        tmp.write_text(self.tree.to_json(indent=1))
        tmp.replace(self.json_path)
        return self.json_path


@dataclass
class StartupModel:
    """The default model while the app starts: what new pages use now, and what the page says."""

    wanted: str  # the configured default
    current: str  # what new pages start with (the bundled model until ``wanted`` is ready)
    state: str = "ready"  # "ready", "loading" or "failed"
    reason: str = ""  # why ``wanted`` could not be loaded
    done: int = 0  # bytes downloaded so far (while loading)
    total: int = 0  # bytes to download (0 = unknown or nothing to download)

    @property
    def notice(self) -> str | None:
        """The page's notice (Markdown), or None when there is nothing to say."""
        if self.state == "loading":
            got = f": downloading, {self.done / 2**20:.0f} of {self.total / 2**20:.0f} MB" if self.total else ""
            return (f"**Loading the default model {self.wanted}** in the background{got}. Until it is ready the "
                    "page uses the bundled model (an H-CAST cast_tiny on PartShapes shapes).")
        if self.state == "failed":
            return (f"**Offline mode**: the default model {self.wanted} could not be loaded ({self.reason}). Showing the "
                    "bundled model instead: an H-CAST cast_tiny trained on PartShapes (10 synthetic shape classes in 3 "
                    "groups), so its class names are shapes, not ImageNet classes.")
        if self.current != self.wanted:
            return None
        return f"The default model **{self.wanted}** is ready." if self.total else None


class Explorer:
    """The app's engine: models, a result cache and a folder for downloads.

    The app serves at once: the configured default model is loaded at start only when it is
    already here (bundled, a local folder, or in the Hub cache); otherwise the bundled model is used
    and the default is loaded in the background (``startup`` tells the page how far it got).
    """

    def __init__(self, cfg: AppConfig | None = None) -> None:
        self.cfg = cfg or AppConfig.from_env()
        self.models = ModelStore(self.cfg)
        if self.cfg.temp_dir is not None:
            Path(self.cfg.temp_dir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="cast-explorer-", dir=self.cfg.temp_dir))
        self._results = _LRU(self.cfg.max_results, max_weight=self.cfg.max_result_mb * 2**20)
        self._folders: OrderedDict[Path, tuple[Any, int]] = OrderedDict()  # result folder -> (result key, bytes), LRU first
        self._folders_lock = threading.Lock()
        self._segment_locks: dict[Any, threading.Lock] = {}
        self.sessions = SessionRegistry(self.cfg.session_memory_mb * 2**20, self.root / "sessions", ttl=self.cfg.session_ttl)
        # results nobody used for a session lifetime leave the cache too (their folders stay, within the disk cap)
        self.sessions.on_sweep.append(lambda: self._results.expire(self.cfg.session_ttl))
        self.sessions.start_sweeping(every=min(60.0, max(1.0, self.cfg.session_ttl / 10)))
        self.autosave = AutosaveStore(Path(self.cfg.autosave_dir), self.cfg.autosave_max_mb * 2**20, self.cfg.autosave_ttl)
        self.startup = StartupModel(self.cfg.default_model, self.cfg.default_model)
        self._ready = threading.Event()
        self._start_default()

    @property
    def default(self) -> str:
        return self.startup.current

    @property
    def notice(self) -> str | None:
        return self.startup.notice

    def _start_default(self) -> None:
        wanted = self.cfg.default_model
        if wanted == BUNDLED or self.models.available_locally(wanted):
            try:
                self.models.segmenter(wanted)
            except CastLoadError as e:
                if wanted == BUNDLED:
                    raise
                self._fall_back(e)
            self._ready.set()
            return
        self.models.segmenter(BUNDLED)
        self.startup.current, self.startup.state = BUNDLED, "loading"
        threading.Thread(target=self._load_default, name="load-default-model", daemon=True).start()
        self._ready.wait(self.cfg.startup_wait)  # a default that fails at once (offline) shows on the first page

    def _fall_back(self, e: CastLoadError) -> None:
        log.warning("default model %s unavailable (%s); using the bundled model", self.cfg.default_model, e)
        self.models.segmenter(BUNDLED)
        self.startup.current, self.startup.state, self.startup.reason = BUNDLED, "failed", e.short

    def _load_default(self) -> None:
        """Background: download and load the default model, then make it the default for new pages."""
        startup = self.startup

        class Progress(tqdm):  # huggingface_hub's download bars, reported to the page
            def update(self, n: float | None = 1) -> bool | None:
                out = super().update(n)
                startup.done, startup.total = int(self.n), int(self.total or 0)
                return out

        try:
            with hub.progress_bars(Progress):
                self.models.segmenter(startup.wanted)
            startup.current, startup.state = startup.wanted, "ready"
            log.info("default model %s ready", startup.wanted)
        except CastLoadError as e:
            self._fall_back(e)
        finally:
            self._ready.set()

    def wait_for_default(self, timeout: float | None = None) -> bool:
        """Block until the default model is loaded or has failed; False on timeout."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- segmentation --------------------------------------------------------------------
    def segment(self, path: str | Path, model: str) -> Result:
        """Segment an image file with a listed model; cached by (model, file content).

        Raises:
            cast.ImageReadError: the file is not an image we accept.
            cast.CastLoadError: the model is not available.
        """
        data = Path(path).read_bytes()
        key = (model, hashlib.sha1(data).hexdigest())
        with self._segment_lock(key):  # the same photo asked for twice at once (upload + button) is segmented once
            hit = self._results.get(key)
            if hit is not None and hit.folder.is_dir():
                self._touch_folder(hit.folder)
                return hit
            return self._segment(data, Path(path).name, key, model)

    def _segment_lock(self, key: Any) -> threading.Lock:
        with self._folders_lock:
            lock = self._segment_locks.get(key)
            if lock is None:
                if len(self._segment_locks) > 256:  # forget idle ones
                    self._segment_locks = {k: v for k, v in self._segment_locks.items() if v.locked()}
                lock = self._segment_locks[key] = threading.Lock()
            return lock

    def _segment(self, data: bytes, name: str, key: tuple[str, str], model: str) -> Result:
        predictor = self.models.segmenter(model)
        buffer = io.BytesIO(data)
        buffer.name = name  # for messages and the JSON's image name
        src = predictor.load(buffer)  # decoded once, at the size its boundaries are refined at, for both uses
        tree = predictor(src)
        photo = display_photo(src, self.cfg.display_size)
        folder = self.root / "results" / f"{key[1][:16]}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"
        write_downloads(tree, folder)  # the full-size maps, one at a time, straight into labels.zip
        tree.offload(folder / "maps.npz")  # and out of memory: exports read them back from here
        concepts = getattr(predictor, "concepts", None)
        result = Result(tree=tree, model=model, photo=photo, folder=folder, sha1=key[1],
                        concept_thumbnails=concepts.thumbnails if concepts is not None else None)
        self._results.put(key, result, weight=result.nbytes)
        self._add_folder(folder, key)
        del tree, src
        trim_memory()  # the temporaries of a big photo (a few hundred MB) go back to the system
        return result

    # -- the disk cache of result folders --------------------------------------------------
    def _touch_folder(self, folder: Path) -> None:
        with self._folders_lock:
            if folder in self._folders:
                self._folders.move_to_end(folder)

    def _add_folder(self, folder: Path, key: Any) -> None:
        """Count a new result folder and remove the least recently used ones beyond the disk cap
        (their results leave the cache; sessions showing them are told to segment again)."""
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        cap = self.cfg.disk_cache_mb * 2**20
        with self._folders_lock:
            self._folders[folder] = (key, size)
            self._folders.move_to_end(folder)
            while len(self._folders) > 1 and sum(sz for _, sz in self._folders.values()) > cap:
                old, (old_key, _) = self._folders.popitem(last=False)
                self._results.pop(old_key)
                shutil.rmtree(old, ignore_errors=True)
                log.info("disk cache: removed %s", old.name)

    def disk_usage(self) -> int:
        """Bytes of the result folders on disk."""
        with self._folders_lock:
            return sum(sz for _, sz in self._folders.values())

    def recognise(self, result: Result, key: SegmentKey) -> list[tuple[str, float]] | None:
        """Masked-image recognition of one segment (cached in the tree); None without a classifier
        or for keys that are not tree segments."""
        predictor = self.models.segmenter(result.model)
        if not predictor.has_head or not key.is_node:
            return None
        if key not in result.tree.segment_predictions:
            predictor.predict_segments(result.tree, [key])
            result.write_json()
        return result.tree.segment_predictions[key]

    def compare(self, result: Result) -> Hierarchy:
        """The ViT + k-means tree of the same image (cached on the result)."""
        if result.baseline is None:
            segmenter = self.models.baseline(result.model)
            result.baseline = segmenter(result.tree.working_image)  # what CAST saw; k-means runs at that size
        return result.baseline

    def precompute(self, paths: list[Path]) -> None:
        """Segment the example images with the default model (run in a background thread)."""
        for p in paths:
            try:
                self.segment(p, self.default)
            except Exception as e:  # an example that fails must not stop the app
                log.warning("example %s: %s", p, e)


def example_files(folder: str | Path) -> list[Path]:
    """The example photos (shown under the upload box, segmented when the app starts)."""
    return sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


MIN_DISPLAY = 512  # small images are shown enlarged to this longest side, so their segments can be clicked


def display_photo(src: ImageInput, size: int) -> np.ndarray:
    """The decoded input with its longest side at most ``size`` pixels (and small images enlarged
    to :data:`MIN_DISPLAY`)."""
    img = Image.fromarray(src.rgb)
    w, h = src.size
    longest = min(max(max(w, h), MIN_DISPLAY), size)
    scale = longest / max(w, h)
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if img.size != target:
        img = img.resize(target, Image.Resampling.LANCZOS)
    return np.asarray(img)


def write_export(tree: Hierarchy, annotations: Annotations, fmt: str, folder: Path) -> Path:
    """One photo's annotations as a file people take to their tools: ``coco`` (COCO instances,
    ``coco.json``), ``labelstudio`` (``labelstudio.zip``: tasks + labeling config) or ``json``
    (``hierarchy.json`` with the annotations). Without regions the raw tree is exported."""
    folder.mkdir(parents=True, exist_ok=True)
    name = tree.image_name or "image.png"
    if fmt == "coco":
        path = folder / "coco.json"
        write_json(path, coco_dataset([coco_record(tree, name, annotations)]))
    elif fmt == "labelstudio":
        tasks = labelstudio_tasks([labelstudio_record(tree, name, annotations)])
        path = folder / "labelstudio.zip"
        tmp = folder / f"labelstudio.{uuid.uuid4().hex}.tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("labelstudio.json", json.dumps(tasks))
            z.writestr("labelstudio.xml", labelstudio_config(tasks))
            z.writestr("README.txt", "Label Studio: create a project, paste labelstudio.xml as its labeling config "
                       "(Settings > Labeling Interface > Code), then import labelstudio.json (Import). The image "
                       f"is referred to as {name!r}: upload it or serve it where data.image points.\n")
        tmp.replace(path)
    elif fmt == "json":
        d = tree.to_dict()
        d["annotations"] = annotations.to_dict() if len(annotations) else None
        path = folder / "hierarchy.json"
        write_json(path, d)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return path


def write_downloads(tree: Hierarchy, folder: Path) -> None:
    """``hierarchy.json`` and ``labels.zip`` (the full-size label maps of ``tree.maps.images()`` as
    PNGs, fast compression, made and written one at a time) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"hierarchy.{uuid.uuid4().hex}.tmp"
    tmp.write_text(tree.to_json(indent=1))
    tmp.replace(folder / "hierarchy.json")
    tmp = folder / f"labels.{uuid.uuid4().hex}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for name, m in tree.maps.images():
            with z.open(name, "w", force_zip64=True) as member:
                Image.fromarray(m).save(member, "PNG", compress_level=1)
            del m
        z.writestr("README.txt", (
            "CAST Explorer label maps at the original image resolution.\n"
            "level1.png (finest) .. level4.png (coarsest): 8-bit, pixel value = segment id of that level.\n"
            "superpixels.png: 16-bit superpixel ids. hierarchy.json (separate download) holds the tree.\n"
        ))
    tmp.replace(folder / "labels.zip")
