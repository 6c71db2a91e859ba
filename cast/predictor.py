"""The inference API: an image in, a :class:`~cast.hierarchy.Hierarchy` out.

Pipeline (per image):
1. read and normalise the input (any PIL mode, EXIF orientation, first frame; JPEGs decoded at a
   reduced scale);
2. resize the whole image, without cropping, to the model's input size (224 x 224 for the
   published models). This is also the **working resolution** of the superpixels: they are
   computed on exactly the image the model sees, as in training;
3. one forward pass (:meth:`CAST.forward_hierarchy`);
4. read out the tree and carry the label maps to the original resolution by nearest-neighbour
   lookup (uint8 maps, so a 24 MP photo costs ~24 MB per level).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .concepts import ConceptHierarchy, hub_concepts_folder, load_concepts
from .hierarchy import Hierarchy, Prediction, build_hierarchy, node_key, parse_node_key
from .hub import default_info, load_model
from .image import ImageInput, ImageLike, read_image
from .models.cast import CAST
from .superpixels import SuperpixelSettings
from .weights import BUNDLED_MODELS, PUBLISHED, ModelInfo, bundled_dir

__all__ = ["Predictor"]

MASK_GREY = 0.5  # value (before normalisation) of everything outside a segment in masked recognition


class Predictor:
    """Segment images into a part-to-whole tree with a CAST model.

    Args:
        model: a loaded :class:`CAST` (with ``model.info``) or anything :func:`cast.load_model`
            accepts (published name, ``"bundled"``, path, Hub repo id).
        device: torch device (default: the model's, CPU for sources).
        superpixels: override the model's superpixel settings.
        top_k: predictions kept per level and per segment.
        concepts: the semantic hierarchy of a HIRL-trained model (:mod:`cast.concepts`); ``"auto"``
            loads it from the model's folder when ``model`` names a bundled model, a local folder or
            a Hub repo in our format (None when the model has none).
    """

    def __init__(self, model: CAST | str = "bundled", device: str | torch.device | None = None,
                 superpixels: SuperpixelSettings | None = None, top_k: int = 5,
                 concepts: ConceptHierarchy | str | None = "auto") -> None:
        if concepts == "auto":
            concepts = None
            if isinstance(model, (str, os.PathLike)):
                src = str(model)
                folder: Path | None = bundled_dir(src) if src in BUNDLED_MODELS else Path(src)
                if not folder.is_dir() and src.count("/") == 1 and not os.path.exists(src) and src not in PUBLISHED:
                    folder = hub_concepts_folder(src)  # a Hub repo in our format
                if folder is not None and folder.is_dir():
                    concepts = load_concepts(folder)
        if not isinstance(model, CAST):
            model = load_model(model, device=device)  # type: ignore[assignment]
            if not isinstance(model, CAST):
                from .errors import CastLoadError

                raise CastLoadError(f"{type(model).__name__} is not a CAST model; segment ViT baselines with "
                                    "cast.baselines.ViTKMeansSegmenter")
        elif device is not None:
            model = model.to(device)
        self.model = model.eval()
        info: ModelInfo = getattr(model, "info", None) or default_info(model)
        if superpixels is not None:
            info = info.with_(superpixels=superpixels)
        self.info = info
        self.device = next(model.parameters()).device
        self.top_k = top_k
        self.input_size = info.input_size
        self._mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1)
        self.has_head = model.num_classes > 0 and info.class_names is not None
        self.concepts = concepts.to(self.device).eval() if isinstance(concepts, ConceptHierarchy) else None

    # -- steps -----------------------------------------------------------------------------
    def load(self, image: ImageLike | ImageInput) -> ImageInput:
        """Decode any supported input (see :func:`cast.image.read_image`); an already decoded
        :class:`~cast.image.ImageInput` is used as it is."""
        if isinstance(image, ImageInput):
            return image
        return read_image(image, draft_to=2 * self.input_size)

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

    def compute_superpixels(self, image: np.ndarray) -> np.ndarray:
        """Superpixel ids ``[S, S]`` int64 of a model-size image, with the model's settings."""
        return self.info.superpixels(image)

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
        t0 = time.perf_counter()
        src = self.load(image)
        work = self.to_model_image(src.rgb)
        t1 = time.perf_counter()
        sp = self.compute_superpixels(work)
        t2 = time.perf_counter()
        x = self.normalise(work[None])
        out = self.model.forward_hierarchy(x, torch.from_numpy(sp)[None].to(self.device))
        level_probs = segment_probs = None
        if self.has_head:
            assert out.level_logits is not None
            level_probs = [lg[0].float().softmax(-1).cpu().numpy() for lg in out.level_logits]
            head, norm = self.model.head, self.model.norm
            segment_probs = [head(norm(t[0])).float().softmax(-1).cpu().numpy() for t in out.segment_tokens]
        token_labels = [t[0].cpu().numpy() for t in out.token_labels]
        concept_path = segment_concepts = None
        if self.concepts is not None:
            concept_path = self.concepts.path(out.features[:1].float())[0]
            segment_concepts = [self.concepts.nearest(self.model.norm(t[0]).float()).cpu().numpy() for t in out.segment_tokens]
        t3 = time.perf_counter()
        hier = build_hierarchy(
            sp, token_labels, src.size, work, self.model.num_clusters,
            level_probs=level_probs, segment_probs=segment_probs,
            class_names=self.info.class_names if self.has_head else None, top_k=self.top_k,
        )
        t4 = time.perf_counter()
        hier.image_name = src.name
        hier.image_notes = src.notes
        if concept_path is not None and segment_concepts is not None:
            hier.concepts = concept_path
            for node in hier.nodes:
                node.concepts = [int(c) for c in segment_concepts[node.level - 1][node.centroid]]
        hier.model = self.info.to_dict()
        hier.timings = {"read": t1 - t0, "superpixels": t2 - t1, "forward": t3 - t2, "readout": t4 - t3, "total": t4 - t0}
        return hier

    @torch.inference_mode()
    def predict_segments(self, hierarchy: Hierarchy, node_ids: Iterable[str | tuple[int, int]],
                         batch_size: int = 8) -> dict[str, list[Prediction]]:
        """Recognise segments on their own: everything outside the segment is set to grey (0.5
        before normalisation), superpixels are recomputed on that masked image, and the model
        classifies it (CAST_FACTS §4). Batched; results are also stored in
        ``hierarchy.segment_predictions``.

        Args:
            node_ids: keys like ``"L2-5"`` or ``(level, id)`` tuples.

        Returns:
            ``{key: [(label, probability), ...top_k]}``.
        """
        if not self.has_head:
            raise ValueError("this model has no classification head; segment recognition needs one")
        keys = [node_key(*parse_node_key(k)) for k in node_ids]
        todo = [k for k in dict.fromkeys(keys) if k not in hierarchy.segment_predictions]
        names = self.info.class_names
        assert names is not None
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images, sps = [], []
            for k in chunk:
                level, node_id = parse_node_key(k)
                hierarchy.node(level, node_id)  # raises KeyError for unknown nodes
                masked = hierarchy.masked_images(level, [node_id], grey=round(MASK_GREY * 255))[0]
                images.append(masked)
                sps.append(self.compute_superpixels(masked))
            x = self.normalise(np.stack(images))
            sp = torch.from_numpy(np.stack(sps)).to(self.device)
            probs = self.model(x, sp).float().softmax(-1).cpu().numpy()
            for k, p in zip(chunk, probs):
                idx = np.argsort(-p, kind="stable")[: self.top_k]
                hierarchy.segment_predictions[k] = [(names[i], float(p[i])) for i in idx]
        return {k: hierarchy.segment_predictions[k] for k in keys}

