"""CAST Explorer's model library: CAST models, superpixels, safe loading and hierarchy readout.

    >>> import cast
    >>> predictor = cast.Predictor("cast_small.deit_in1k")   # or "bundled", a folder, a file
    >>> tree = predictor("photo.jpg")
    >>> tree.level_predictions[3][:3], tree.label_maps[0].shape

Where things are (imports flow down this list; nothing here imports the app or training code):

- :mod:`cast.predictor`: :class:`Predictor` (CAST) and :func:`load_segmenter` (any model) — the API;
- :mod:`cast.segmenter`: what every segmenter shares (reading, resizing, masked recognition);
- :mod:`cast.baselines`: the ViT + hierarchical k-means baseline segmenter;
- :mod:`cast.hierarchy`: the tree (:class:`Hierarchy`, :class:`Node`), its JSON and PNG export;
- :mod:`cast.labelmaps`: the tree's full-resolution maps, held compactly, made on request, offloadable;
- :mod:`cast.refine`: label maps at the photo's resolution with boundaries that follow it;
- :mod:`cast.keys`: segment keys (``"L2-5"``) and display levels;
- :mod:`cast.loading`: :func:`load_model` for every source, safe unpickling, published files;
- :mod:`cast.hub`: Hugging Face Hub downloads with clear errors;
- :mod:`cast.models`: the networks, registered with timm (CAST, the conv-stem ViT);
- :mod:`cast.concepts`: HIRL concept hierarchies; :mod:`cast.clustering`: spherical k-means;
- :mod:`cast.superpixels`, :mod:`cast.image`, :mod:`cast.ops`, :mod:`cast.weights` (the table of
  published and bundled weights), :mod:`cast.errors`.

Importing this package registers the ``cast_*`` and ``vit_conv_*`` models with timm.
"""

from .errors import (
    CastError,
    CastLoadError,
    CheckpointFormatError,
    CheckpointMismatchError,
    ImageReadError,
    UnsafeCheckpointError,
    WeightsNotAvailableError,
)
from .hierarchy import Hierarchy, Node
from .keys import ROOT, Level, SegmentKey
from .loading import convert_official_state_dict, load_model, safe_torch_load
from .models import CAST, HCAST, MODEL_NAMES, CastOutput, checkpoint_filter_fn
from .ops import farthest_point_sample
from .predictor import Predictor, load_segmenter
from .segmenter import Segmenter
from .superpixels import SuperpixelSettings, superpixels
from .taxonomy import Taxonomy, TaxonomyError, load_taxonomy
from .weights import BUNDLED, PUBLISHED, ModelInfo

__version__ = "0.1.0"

__all__ = [
    "CAST", "HCAST", "Taxonomy", "TaxonomyError", "load_taxonomy",
    "CastOutput", "Hierarchy", "Node", "Predictor", "Segmenter", "ModelInfo", "SuperpixelSettings",
    "SegmentKey", "Level", "ROOT",
    "load_model", "load_segmenter", "safe_torch_load", "superpixels", "farthest_point_sample",
    "convert_official_state_dict", "checkpoint_filter_fn", "MODEL_NAMES", "PUBLISHED", "BUNDLED",
    "CastError", "CastLoadError", "UnsafeCheckpointError", "CheckpointFormatError", "CheckpointMismatchError",
    "WeightsNotAvailableError", "ImageReadError",
]
