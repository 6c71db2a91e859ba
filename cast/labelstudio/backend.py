"""What the Label Studio backend does with a request, independent of HTTP: set up a project,
pre-annotate tasks (the tree as brush regions with part-of relations, written by
:func:`cast.exports.labelstudio_record`, the same writer as ``cast segment --format labelstudio``)
and answer smart-tool prompts (a click -> the segment under it at the chosen level; a box -> the
tree node that matches it best).

Trees are cached per image (a bounded LRU), so a prompt on an image already pre-annotated or
prompted answers without the model.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CastError
from ..exports import LabelStudioTarget, labelstudio_record, ls_rle_encode
from ..hierarchy import Hierarchy
from ..segmenter import Prepared, Segmenter
from .config import ProjectConfig, Prompt, UnsupportedConfig, read_config
from .media import FetchError, ImageFetcher

__all__ = ["LabelStudioBackend", "BadRequest", "TreeCache", "UnsupportedConfig"]

log = logging.getLogger("cast.labelstudio")


class BadRequest(ValueError):
    """A request the backend cannot answer; the message is one line, for Label Studio to show."""


@dataclass
class _Entry:
    tree: Hierarchy | None = None
    error: str | None = None
    ready: threading.Event | None = None


class TreeCache:
    """Trees by image reference, at most ``size`` of them (least recently used dropped). Two
    requests for the same image wait for one segmentation."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Any) -> Hierarchy:
        with self._lock:
            entry = self._items.get(key)
            owner = entry is None
            if owner:
                entry = self._items[key] = _Entry(ready=threading.Event())
            self._items.move_to_end(key)
        assert entry is not None and entry.ready is not None
        if owner:
            try:
                entry.tree = make()
            except Exception as e:
                entry.error = str(e)
                with self._lock:
                    self._items.pop(key, None)  # a failure is not remembered: the next request tries again
                raise
            finally:
                entry.ready.set()
                self._trim()
        entry.ready.wait()
        if entry.tree is None:
            raise FetchError(entry.error or f"{key}: failed")
        return entry.tree

    def put(self, key: str, tree: Hierarchy) -> None:
        entry = _Entry(tree=tree, ready=threading.Event())
        entry.ready.set()
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        with self._lock:
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            entry = self._items.get(key)
            return entry is not None and entry.tree is not None


class LabelStudioBackend:
    """The model side of Label Studio's ML backend protocol (``/setup``, ``/predict``).

    Args:
        segmenter: a :class:`cast.Predictor` (or any segmenter giving a tree).
        model_version: what Label Studio is told the model is (the model's name).
        levels: tree levels pre-annotated (1 finest .. 4 coarsest).
        fetcher: reads task images (:class:`cast.labelstudio.media.ImageFetcher`).
        cache_size: trees kept for prompts.
        workers: threads that fetch, decode and prepare images, build trees and write predictions
            while the model runs (the heavy parts release the GIL).
        batch_size: images per forward pass when many tasks come at once.
    """

    def __init__(self, segmenter: Segmenter, model_version: str, fetcher: ImageFetcher,
                 levels: Sequence[int] = (1, 2, 3, 4), cache_size: int = 32, workers: int = 2,
                 batch_size: int = 8) -> None:
        bad = [lv for lv in levels if lv not in (1, 2, 3, 4)]
        if bad or not levels:
            raise ValueError(f"levels are 1 (finest) to 4 (coarsest), got {list(levels)}")
        self.segmenter, self.model_version, self.fetcher = segmenter, model_version, fetcher
        self.levels = tuple(sorted(set(levels)))
        self.workers, self.batch_size = max(1, workers), max(1, batch_size)
        self.trees = TreeCache(cache_size)
        self._model_lock = threading.Lock()  # one forward pass at a time (torch uses the cores)
        self._configs: dict[str, str] = {}  # project id -> labeling config sent at setup

    # -- setup -------------------------------------------------------------------------------
    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/setup``: check and remember the project's labeling config; returns the model version.

        Raises:
            UnsupportedConfig: the config has no BrushLabels on an Image, or no Relations.
        """
        schema = body.get("schema")
        if isinstance(schema, str) and schema.strip():
            read_config(schema, self.levels)  # raises with the reason
            self._configs[_project_id(body)] = schema
        return {"model_version": self.model_version}

    def config_for(self, body: dict[str, Any]) -> ProjectConfig:
        xml = body.get("label_config") or self._configs.get(_project_id(body))
        if not isinstance(xml, str) or not xml.strip():
            raise BadRequest("no labeling config: neither label_config in the request nor a /setup for this project")
        return read_config(xml, self.levels)

    # -- trees -------------------------------------------------------------------------------
    def tree(self, ref: str) -> Hierarchy:
        """The tree of a task's image (cached)."""

        def make() -> Hierarchy:
            data = self.fetcher.fetch(ref)
            with self._model_lock:
                try:
                    return self.segmenter(data)
                except CastError as e:
                    raise FetchError(f"{ref}: {e}") from None

        return self.trees.get(ref, make)

    def trees_of(self, refs: Sequence[str], pool: ThreadPoolExecutor) -> dict[str, Hierarchy | FetchError]:
        """The trees of many images: cached ones at once; the others fetched and prepared in
        ``pool`` while earlier ones run through the model in batches, then built in ``pool``.
        An image that cannot be fetched or read maps to its :class:`FetchError`."""
        out: dict[str, Hierarchy | FetchError] = {}
        todo = [r for r in dict.fromkeys(refs) if r not in self.trees]
        for r in dict.fromkeys(refs):
            if r not in todo:
                try:
                    out[r] = self.tree(r)
                except FetchError as e:
                    out[r] = e
        built = []
        batch: list[tuple[str, Prepared]] = []

        def flush() -> None:
            with self._model_lock, torch.inference_mode():
                readouts = self.segmenter.read_batch([item for _, item in batch])
            built.extend((ref, pool.submit(self.segmenter.finish, item, ro)) for (ref, item), ro in zip(batch, readouts))
            batch.clear()

        ahead = 2 * self.batch_size  # images fetched and prepared ahead of the model, at most
        pending = [(r, pool.submit(self._prepare, r)) for r in todo[:ahead]]
        for i, ref in enumerate(todo):
            item = pending[i][1].result()
            if i + ahead < len(todo):
                pending.append((todo[i + ahead], pool.submit(self._prepare, todo[i + ahead])))
            pending[i] = (ref, None)  # type: ignore[assignment]  # let the prepared image go once batched
            if isinstance(item, FetchError):
                out[ref] = item
                continue
            batch.append((ref, item))
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        for ref, future in built:
            tree = future.result()
            self.trees.put(ref, tree)
            out[ref] = tree
        return out

    def _prepare(self, ref: str) -> Prepared | FetchError:
        try:
            return self.segmenter.prepare(self.fetcher.fetch(ref))
        except FetchError as e:
            return e
        except CastError as e:
            return FetchError(f"{ref}: {e}")

    # -- predict -----------------------------------------------------------------------------
    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/predict``: one prediction per task, in order; with ``params.context`` (a smart tool),
        the answer to that prompt.

        A task whose image cannot be fetched or read gets no prediction (``[]``, so Label Studio
        asks again next time) and an entry in ``errors``; the other tasks are still predicted.

        Raises:
            BadRequest, UnsupportedConfig: the request itself cannot be served.
        """
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("the request has no list of tasks")
        config = self.config_for(body)
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if context:
            if len(tasks) != 1:
                raise BadRequest("a smart-tool prompt comes with exactly one task")
            return {"results": [self.interactive(tasks[0], context, config)]}
        refs: list[str | BadRequest] = []
        for task in tasks:
            try:
                refs.append(self._image_ref(task, config.target))
            except BadRequest as e:
                refs.append(e)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="cast-ls") as pool:
            trees = self.trees_of([r for r in refs if isinstance(r, str)], pool)
            records = [pool.submit(labelstudio_record, trees[r], r, model_version=self.model_version, target=config.target)
                       if isinstance(r, str) and not isinstance(trees[r], FetchError) else None for r in refs]
            results: list[Any] = []
            errors: list[dict[str, Any]] = []
            for task, ref, record in zip(tasks, refs, records):
                if record is not None:
                    results.append(record.result()["predictions"][0])
                    continue
                problem = ref if isinstance(ref, BadRequest) else trees[ref]
                log.warning("task %s: %s", task.get("id"), problem)
                errors.append({"task": task.get("id"), "error": str(problem)})
                results.append([])
        out: dict[str, Any] = {"results": results, "model_version": self.model_version}
        if errors:
            out["errors"] = errors
        return out

    def _image_ref(self, task: dict[str, Any], target: LabelStudioTarget) -> str:
        data = task.get("data") or {}
        ref = data.get(target.data_key)
        if not isinstance(ref, str) or not ref:
            raise BadRequest(f"task {task.get('id')}: no image in data.{target.data_key}")
        return ref

    # -- smart tools -------------------------------------------------------------------------
    def interactive(self, task: dict[str, Any], context: dict[str, Any], config: ProjectConfig) -> dict[str, Any]:
        """The answer to a smart-tool prompt: one brush region.

        Keypoints (``keypointlabels``): the segments under the positive clicks at the level their
        label chooses, less those under negative (Alt) clicks. A rectangle (``rectanglelabels``):
        the tree node, over all four levels, with the highest IoU with the box.
        """
        items = context.get("result") if isinstance(context, dict) else None
        if not isinstance(items, list) or not items:
            raise BadRequest("the smart-tool context has no result")
        ref = self._image_ref(task, config.target)
        try:
            tree = self.tree(ref)
        except FetchError as e:
            raise BadRequest(str(e)) from None
        kinds = {it.get("type") for it in items if isinstance(it, dict)}
        if "rectanglelabels" in kinds:
            box = next(it for it in items if it.get("type") == "rectanglelabels")
            return self._box_answer(tree, box, config)
        points = [it for it in items if isinstance(it, dict) and it.get("type") == "keypointlabels"]
        if not points:
            raise BadRequest(f"smart tools answered: keypoints and rectangles, got {sorted(map(str, kinds))}")
        return self._click_answer(tree, points, config)

    def _click_answer(self, tree: Hierarchy, points: list[dict[str, Any]], config: ProjectConfig) -> dict[str, Any]:
        prompt = config.keypoints or Prompt(str(points[0].get("from_name", "")), {})
        label = _first_label(points[0], "keypointlabels")
        level = config.level_of(label, prompt)
        W, H = tree.size
        keep: list[int] = []
        drop: list[int] = []
        for p in points:
            v = p.get("value") or {}
            try:
                x = min(max(int(float(v["x"]) / 100.0 * W), 0), W - 1)
                y = min(max(int(float(v["y"]) / 100.0 * H), 0), H - 1)
            except (KeyError, TypeError, ValueError):
                raise BadRequest("a keypoint without x and y (percent of the image)") from None
            (keep if p.get("is_positive", True) else drop).append(tree.segment_at(x, y, level))
        ids = sorted(set(keep) - set(drop))
        if not ids:
            return {"result": [], "score": 0.0, "model_version": self.model_version}
        labels = tree.label_map(level)
        mask = np.isin(labels, ids)
        nodes = [tree.node(level, i) for i in ids]
        score = float(np.mean([n.own_predictions[0][1] for n in nodes])) if all(n.own_predictions for n in nodes) else None
        region = self._region(tree, mask, f"L{level}-" + "+".join(map(str, ids)), label, nodes[0], config)
        return _answer(region, score, self.model_version)

    def _box_answer(self, tree: Hierarchy, box: dict[str, Any], config: ProjectConfig) -> dict[str, Any]:
        W, H = tree.size
        v = box.get("value") or {}
        try:
            x0, y0 = float(v["x"]) / 100.0 * W, float(v["y"]) / 100.0 * H
            x1, y1 = x0 + float(v["width"]) / 100.0 * W, y0 + float(v["height"]) / 100.0 * H
        except (KeyError, TypeError, ValueError):
            raise BadRequest("a rectangle without x, y, width and height (percent of the image)") from None
        c0, r0 = max(int(round(x0)), 0), max(int(round(y0)), 0)
        c1, r1 = min(int(round(x1)), W), min(int(round(y1)), H)
        if c1 <= c0 or r1 <= r0:
            raise BadRequest("the rectangle is empty or outside the image")
        box_area = (c1 - c0) * (r1 - r0)
        best = (-1.0, 0, 0)
        for level in (1, 2, 3, 4):
            labels = tree.label_map(level)
            n = tree.num_segments[level - 1]
            inside = np.bincount(labels[r0:r1, c0:c1].ravel(), minlength=n)[:n].astype(np.float64)
            areas = np.array([node.area for node in tree.nodes_at(level)], dtype=np.float64)
            iou = inside / (areas + box_area - inside)
            i = int(iou.argmax())
            if iou[i] > best[0]:
                best = (float(iou[i]), level, i)
        iou, level, node_id = best
        mask = tree.label_map(level) == node_id
        region = self._region(tree, mask, f"L{level}-{node_id}", _first_label(box, "rectanglelabels"),
                              tree.node(level, node_id), config)
        return _answer(region, round(iou, 6), self.model_version)

    def _region(self, tree: Hierarchy, mask: np.ndarray, region_id: str, prompt_label: str | None, node: Any,
                config: ProjectConfig) -> dict[str, Any]:
        target = config.target
        labels = target.labels or ()
        if prompt_label is not None and prompt_label in labels:
            label = prompt_label
        else:
            label = target.label(node.own_predictions[0][0] if node.own_predictions else "", node.level)
        return target.brush_region(region_id, label, ls_rle_encode(mask), tree.size)


def _answer(region: dict[str, Any], score: float | None, model_version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"result": [region], "model_version": model_version}
    if score is not None:
        out["score"] = round(score, 6)
    return out


def _first_label(item: dict[str, Any], key: str) -> str | None:
    value = item.get("value") or {}
    labels = value.get(key) or value.get("labels") or []
    return str(labels[0]) if labels else None


def _project_id(body: dict[str, Any]) -> str:
    """Label Studio names a project ``"<id>.<created timestamp>"``."""
    return str(body.get("project", "")).split(".", 1)[0]
