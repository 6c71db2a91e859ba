"""The inference API: :class:`Predictor` segments images with a CAST model, :func:`load_segmenter`
returns the right segmenter for any model source (CAST or the ViT + k-means baseline).

The steps every segmenter shares (reading, resizing to the working resolution, building the tree)
are in :mod:`cast.segmenter`. CAST's own step: superpixels computed on exactly the image the model
sees (as in training), one forward pass (:meth:`CAST.forward_hierarchy`), and its per-level,
per-segment and concept readouts.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from .baselines import ViTKMeansSegmenter
from .concepts import ConceptHierarchy
from .errors import CastLoadError
from .hierarchy import Readout
from .loading import attach_taxonomy, load_concepts_of, load_model
from .models import CAST
from .refine import RefineSettings
from .segmenter import Prepared, Segmenter
from .superpixels import SuperpixelSettings
from .weights import BUNDLED

__all__ = ["Predictor", "load_segmenter"]


class Predictor(Segmenter):
    """Segment images into a part-to-whole tree with a CAST model.

    Args:
        model: a loaded :class:`CAST` (with ``model.info``) or anything :func:`cast.load_model`
            accepts (published name, ``"bundled"``, path, Hub repo id).
        device: torch device (default: the model's, CPU for sources).
        superpixels: override the model's superpixel settings.
        top_k: predictions kept per level and per segment.
        concepts: the semantic hierarchy of a HIRL-trained model (:mod:`cast.concepts`); ``"auto"``
            loads the one saved beside the weights when ``model`` is a source (None when it has none).
        refine: boundaries at the photo's resolution (:class:`cast.refine.RefineSettings`, or
            ``False`` for the working-size maps carried by nearest lookup).
        compile: run the forward pass through ``torch.compile`` (the first images of each new
            superpixel count compile for a while; then faster, see README *Benchmarks*).

    Raises:
        CastLoadError: the source cannot be loaded, or holds a model that is not a CAST.
    """

    def __init__(self, model: CAST | str | os.PathLike[str] = BUNDLED, device: str | torch.device | None = None,
                 superpixels: SuperpixelSettings | None = None, top_k: int = 5,
                 concepts: ConceptHierarchy | str | None = "auto", compile: bool = False,
                 refine: RefineSettings | bool = True) -> None:
        if concepts == "auto":
            concepts = load_concepts_of(model) if isinstance(model, (str, os.PathLike)) else None
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=device)  # type: ignore[assignment]
        elif device is not None:
            model = model.to(device)
        if not isinstance(model, CAST):
            raise CastLoadError(f"{type(model).__name__} is not a CAST model; segment ViT baselines with "
                                "cast.load_segmenter or cast.baselines.ViTKMeansSegmenter", short="not a CAST model")
        info = getattr(model, "info", None) or model.default_info()
        if superpixels is not None:
            info = info.with_(superpixels=superpixels)
        super().__init__(model, info, top_k, refine)
        self.model: CAST = model
        self._forward = torch.compile(model.forward_hierarchy) if compile else model.forward_hierarchy
        self.concepts = concepts.to(self.device).eval() if isinstance(concepts, ConceptHierarchy) else None

    def to(self, device: str | torch.device) -> Predictor:
        super().to(device)
        self._forward = self.model.forward_hierarchy
        if self.concepts is not None:
            self.concepts = self.concepts.to(device)
        return self

    def without_weights(self) -> Predictor:
        light = super().without_weights()
        assert isinstance(light, Predictor)
        light._forward = light.model.forward_hierarchy
        light.concepts = None if self.concepts is None else copy.deepcopy(self.concepts).to("meta")
        return light

    def compute_superpixels(self, image: np.ndarray) -> np.ndarray:
        """Superpixel ids ``[S, S]`` int64 of a model-size image, with the model's settings."""
        return self.info.superpixels(image)

    def model_inputs(self, images: np.ndarray) -> tuple[torch.Tensor | int, ...]:
        """Normalised images, their superpixels (recomputed on exactly these images) and the
        superpixel count (read on the host, so the model never waits for the device)."""
        sp = np.stack([self.compute_superpixels(im) for im in images])
        return self.normalise(images), torch.from_numpy(sp).to(self.device), int(sp.max()) + 1

    @torch.inference_mode()
    def classify_embed(self, images: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The model's own :meth:`~cast.CAST.classify_embed` (H-CAST: its fine head, which reads an earlier stage)."""
        logits, feats = self.model.classify_embed(*self.model_inputs(images))
        probs = logits.float().softmax(-1).cpu().numpy() if self.has_head and logits is not None else None
        return probs, feats.float().cpu().numpy()

    def prepare_inputs(self, work: np.ndarray) -> np.ndarray:
        return self.compute_superpixels(work)

    def read(self, work: np.ndarray) -> Readout:
        """Superpixels, one forward pass and the readout of one working-size image."""
        t0 = time.perf_counter()
        sp = self.compute_superpixels(work)
        t1 = time.perf_counter()
        readout = self._forward_readouts([work], [sp])[0]
        readout.timings = {"superpixels": t1 - t0, **readout.timings}
        return readout

    def read_batch(self, items: list[Prepared]) -> list[Readout]:
        """One batched forward pass over prepared images. (In a batch every image has as many
        superpixel tokens as the one with the most, the rest being padding; the published model
        attends to padding, so outputs can differ slightly from one image at a time.)"""
        return self._forward_readouts([it.work for it in items], [it.superpixels for it in items])

    def _forward_readouts(self, works: list[np.ndarray], sps: list[np.ndarray]) -> list[Readout]:
        t0 = time.perf_counter()
        sp = np.stack(sps)
        out = self._forward(self.normalise(np.stack(works)), torch.from_numpy(sp).to(self.device), int(sp.max()) + 1)
        readouts = []
        for b in range(len(works)):
            r = Readout(sps[b], [t[b].cpu().numpy() for t in out.token_labels], self.model.num_clusters)
            if self.has_head and out.taxonomy_logits is not None:  # H-CAST: one head per taxonomy level
                assert out.segment_taxonomy_logits is not None
                r.taxonomy_probs = [lg[b].float().softmax(-1).cpu().numpy() for lg in out.taxonomy_logits]
                r.segment_taxonomy_probs = [lg[b].float().softmax(-1).cpu().numpy() for lg in out.segment_taxonomy_logits]
                r.taxonomy_tree_levels = out.taxonomy_tree_levels
            elif self.has_head:
                assert out.level_logits is not None and out.segment_logits is not None
                r.level_probs = [lg[b].float().softmax(-1).cpu().numpy() for lg in out.level_logits]
                r.segment_probs = [lg[b].float().softmax(-1).cpu().numpy() for lg in out.segment_logits]
            if self.concepts is not None:
                r.concepts = self.concepts.path(out.features[b:b + 1].float())[0]
                r.segment_concepts = [self.concepts.nearest(f[b].float()).cpu().numpy() for f in out.segment_features]
            readouts.append(r)
        share = (time.perf_counter() - t0) / len(works)
        for r in readouts:
            r.timings = {"forward": share}
        return readouts


def load_segmenter(source: str | os.PathLike[str] | torch.nn.Module = BUNDLED, device: str | torch.device | None = None,
                   top_k: int = 5, refine: RefineSettings | bool = True,
                   taxonomy: str | os.PathLike[str] | None = None) -> Segmenter:
    """The segmenter for any model: a :class:`Predictor` for CAST, a
    :class:`~cast.baselines.ViTKMeansSegmenter` for the ViT baselines.

    Args:
        source: a loaded model (with ``model.info``) or anything :func:`cast.load_model` accepts.
        taxonomy: a taxonomy file for a hierarchical model's levels (see :func:`cast.load_model`).

    Raises:
        CastLoadError: the source cannot be loaded.
    """
    model = load_model(source, device=device) if isinstance(source, (str, os.PathLike)) else source
    if taxonomy is not None:
        attach_taxonomy(model, taxonomy, str(source) if isinstance(source, (str, os.PathLike)) else "model")
    if isinstance(model, CAST):
        concepts = load_concepts_of(source) if isinstance(source, (str, os.PathLike)) else None
        return Predictor(model, device=device, top_k=top_k, concepts=concepts, refine=refine)
    info = getattr(model, "info", None)
    if info is None:
        raise CastLoadError(f"{type(model).__name__} carries no metadata (model.info); load it with cast.load_model")
    return ViTKMeansSegmenter(model, info, top_k=top_k, refine=refine)
