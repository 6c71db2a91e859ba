"""What every segmenter shares: an image in, a :class:`~cast.hierarchy.Hierarchy` out.

:class:`Segmenter` does the parts common to CAST (:class:`cast.Predictor`) and the ViT + k-means
baseline (:class:`cast.baselines.ViTKMeansSegmenter`):

1. read and normalise the input (any PIL mode, EXIF orientation, first frame; JPEGs decoded at a
   reduced scale) with :func:`cast.image.read_image`;
2. resize the whole image, without cropping, to the model's input size (224 x 224 for the
   published models): the **working resolution**;
3. ask the subclass for a :class:`~cast.hierarchy.Readout` of that image (:meth:`Segmenter.read`);
4. build the tree and carry its label maps to the original resolution with boundaries that follow
   the photo (:mod:`cast.refine`; ``refine=False``: nearest-neighbour lookup); uint8 maps, so a
   24 MP photo costs ~24 MB per level.

It also gives every segmenter the same classifier access (:meth:`Segmenter.classify_embed`) and
masked-segment recognition (:meth:`Segmenter.predict_segments`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .hierarchy import Hierarchy, Prediction, Readout, build_hierarchy
from .image import ImageInput, ImageLike, read_image
from .keys import SegmentKey
from .refine import RefineSettings, refinement_size
from .weights import ModelInfo

__all__ = ["Segmenter", "Prepared", "MASK_GREY"]

MASK_GREY = 0.5  # value (before normalisation) of everything outside a segment in masked recognition


@dataclass
class Prepared:
    """One image ready for the model (what :meth:`Segmenter.prepare` returns)."""

    src: ImageInput  # the decoded photo (at the size its boundaries are refined at)
    work: np.ndarray  # [S, S, 3] uint8, the photo as the model sees it
    superpixels: np.ndarray | None  # [S, S] int64 for models that read superpixels
    detail: np.ndarray | None  # the photo at the refinement size (None: nothing to refine)
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the steps so far
    started: float = 0.0  # perf_counter when preparation began (0: unknown, e.g. another process)


class Segmenter:
    """Base of the segmenters (see the module docstring). Subclasses implement :meth:`read` and,
    when their model needs more than the image, :meth:`model_inputs`.

    Attributes:
        model: the network (eval mode); ``model.forward_features`` / ``forward_head(pre_logits=True)``
            / ``head`` follow timm's conventions.
        info: the model's metadata (input size, mean/std, class names, superpixel settings).
        has_head: whether class predictions exist (a head and class names).
    """

    def __init__(self, model: nn.Module, info: ModelInfo, top_k: int = 5, refine: RefineSettings | bool = True) -> None:
        self.model = model.eval()
        self.info = info
        self.top_k = top_k
        self.refine = refine if isinstance(refine, RefineSettings) else RefineSettings(enabled=bool(refine))
        self.input_size = info.input_size
        self.device = next(model.parameters()).device
        self._mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1)
        self.has_head = int(getattr(model, "num_classes", 0)) > 0 and info.class_names is not None

    def to(self, device: str | torch.device) -> Segmenter:
        """Move the model (and what the forward pass uses with it) to ``device``; returns self."""
        self.model = self.model.to(device)
        self.device = torch.device(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self

    def without_weights(self) -> Segmenter:
        """A copy for the steps around the model (:meth:`prepare`, :meth:`finish`) in other
        processes: the same settings, its model on the meta device (no weights, cheap to ship)."""
        light = copy.copy(self)
        light.model = copy.deepcopy(self.model).to("meta")
        return light

    # -- image preparation -----------------------------------------------------------------
    def load(self, image: ImageLike | ImageInput) -> ImageInput:
        """Decode any supported input (see :func:`cast.image.read_image`); an already decoded
        :class:`~cast.image.ImageInput` is used as it is."""
        if isinstance(image, ImageInput):
            return image
        if self.refine.enabled:
            return read_image(image, decode_pixels=self.refine.max_pixels)
        return read_image(image, draft_to=2 * self.input_size)

    def detail_image(self, src: ImageInput) -> np.ndarray | None:
        """The photo at the size its boundaries are refined at (the original, capped at
        ``refine.max_pixels``), or None when there is nothing to refine."""
        if not self.refine.enabled:
            return None
        w, h = refinement_size(src.size, self.refine.max_pixels)
        if w <= self.input_size and h <= self.input_size:
            return None
        if src.rgb.shape[:2] == (h, w):
            return src.rgb
        return np.asarray(Image.fromarray(src.rgb).resize((w, h), Image.Resampling.BILINEAR))

    def to_model_image(self, rgb: np.ndarray) -> np.ndarray:
        """Resize a ``[h, w, 3]`` uint8 image to ``[S, S, 3]`` (S = input size), no crop."""
        s = self.input_size
        if rgb.shape[:2] == (s, s):
            return rgb
        return np.asarray(Image.fromarray(rgb).resize((s, s), Image.Resampling.BILINEAR, reducing_gap=None))

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        """``[B, S, S, 3]`` uint8 -> ``[B, 3, S, S]`` float normalised tensor on the device."""
        x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std

    def model_inputs(self, images: np.ndarray) -> tuple[torch.Tensor | int, ...]:
        """What ``model(*inputs)`` takes for ``[B, S, S, 3]`` uint8 images (the normalised images)."""
        return (self.normalise(images),)

    # -- the model -------------------------------------------------------------------------
    def read(self, work: np.ndarray) -> Readout:  # pragma: no cover - abstract
        """The subclass's readout of one working-size image ``[S, S, 3]`` uint8."""
        raise NotImplementedError

    @torch.inference_mode()
    def classify_embed(self, images: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Class probabilities ``[B, num_classes]`` (None without a head) and the final [CLS]
        features ``[B, C]`` of ``[B, S, S, 3]`` uint8 images shown whole."""
        feats = self.model.forward_head(self.model.forward_features(*self.model_inputs(images)), pre_logits=True)
        probs = self.model.head(feats).float().softmax(-1).cpu().numpy() if self.has_head else None
        return probs, feats.float().cpu().numpy()

    def flop_inputs(self) -> tuple[torch.Tensor | int, ...]:
        """Inputs of one forward pass for counting operations (a half-bright, half-dark image)."""
        s = self.input_size
        img = np.zeros((1, s, s, 3), np.uint8)
        img[:, :, : s // 2] = 200
        return self.model_inputs(img)

    # -- main API --------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, image: ImageLike | ImageInput) -> Hierarchy:
        """Segment one image.

        Args:
            image: path, bytes, file object, PIL image (any mode), ``HxWx3`` uint8 array, or a
                :class:`~cast.image.ImageInput` decoded by the caller.

        Returns:
            a :class:`Hierarchy` whose label maps have the original (EXIF-corrected) size.

        Raises:
            cast.ImageReadError: unreadable, truncated, too large or empty input.
        """
        item = self.prepare(image)
        return self.finish(item, self.read_batch([item])[0])

    def prepare(self, image: ImageLike | ImageInput) -> Prepared:
        """The CPU work before the model (safe to run in DataLoader workers): decode, resize to the
        working size, model-specific inputs (:meth:`prepare_inputs`), the detail image."""
        t0 = time.perf_counter()
        src = self.load(image)
        work = self.to_model_image(src.rgb)
        t1 = time.perf_counter()
        superpixels = self.prepare_inputs(work)
        t2 = time.perf_counter()
        timings = {"read": t1 - t0, **({"superpixels": t2 - t1} if superpixels is not None else {})}
        return Prepared(src, work, superpixels, self.detail_image(src), timings, t0)

    def prepare_inputs(self, work: np.ndarray) -> np.ndarray | None:
        """What the model needs besides the image (CAST: superpixels), computed on the CPU."""
        return None

    def read_batch(self, items: list[Prepared]) -> list[Readout]:
        """The readouts of prepared images (subclasses may run them as one batch)."""
        return [self.read(item.work) for item in items]

    def finish(self, item: Prepared, readout: Readout) -> Hierarchy:
        """Build the tree of a prepared image from its readout (boundaries refined at the detail size)."""
        t2 = time.perf_counter()
        src = item.src
        tree = build_hierarchy(readout, item.work, src.size, class_names=self.info.class_names if self.has_head else None,
                               top_k=self.top_k, image_name=src.name, image_notes=src.notes, model=self.describe(),
                               detail_image=item.detail, refine=self.refine, taxonomy=self.info.taxonomy)
        t3 = time.perf_counter()
        tree.timings = {**item.timings, **readout.timings, "readout": t3 - t2, **tree.timings,
                        "total": t3 - item.started if item.started else sum(item.timings.values()) + t3 - t2}
        return tree

    def describe(self) -> dict:
        """The ``model`` entry of ``hierarchy.json``."""
        return self.info.to_dict()

    @torch.inference_mode()
    def predict_segments(self, hierarchy: Hierarchy, keys: Iterable[str | tuple[int, int] | SegmentKey],
                         batch_size: int = 8) -> dict[SegmentKey, list[Prediction]]:
        """Recognise segments on their own: everything outside the segment is set to grey (0.5
        before normalisation) and the classifier sees that image (the masking the paper used to
        label segments). Batched; results are also stored in ``hierarchy.segment_predictions``.

        Args:
            keys: segment keys (``"L2-5"``, ``(2, 5)`` or :class:`~cast.keys.SegmentKey`).

        Returns:
            ``{key: [(label, probability), ...top_k]}``.

        Raises:
            ValueError: the model has no classifier. KeyError: a key not in the tree.
        """
        if not self.has_head:
            raise ValueError("this model has no classification head; segment recognition needs one")
        wanted = [SegmentKey.parse(k) for k in keys]
        for k in wanted:
            hierarchy.node(k)  # raises KeyError for unknown nodes
        todo = [k for k in dict.fromkeys(wanted) if k not in hierarchy.segment_predictions]
        names = self.info.class_names
        assert names is not None
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = np.stack([hierarchy.masked_images(int(k.level), [k.id], grey=round(MASK_GREY * 255))[0] for k in chunk])
            probs, _ = self.classify_embed(images)
            assert probs is not None
            for k, p in zip(chunk, probs):
                idx = np.argsort(-p, kind="stable")[: self.top_k]
                hierarchy.segment_predictions[k] = [(names[i], float(p[i])) for i in idx]
        return {k: hierarchy.segment_predictions[k] for k in wanted}
