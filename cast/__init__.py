"""CAST Explorer's model library: CAST models, superpixels, safe loading and hierarchy readout.

    >>> import cast
    >>> predictor = cast.Predictor("cast_small.deit_in1k")   # or "bundled", a folder, a file
    >>> tree = predictor("photo.jpg")
    >>> tree.level_predictions[3][:3], tree.label_maps[0].shape

Importing this package registers the ``cast_*`` models with timm.
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
from .hub import load_model, safe_torch_load
from .models import CAST, MODEL_NAMES, CastOutput, checkpoint_filter_fn
from .ops import farthest_point_sample
from .predictor import Predictor
from .superpixels import SuperpixelSettings, superpixels
from .weights import BUNDLED, PUBLISHED, ModelInfo

__version__ = "0.1.0"


def convert_official_state_dict(obj: object) -> dict:
    """State dict for :class:`CAST` from whatever ``torch.load`` returned for a published file
    (MoCo-v3 dict, DeiT dict or bare state dict). The model it fits is rebuilt from the keys, and
    any key that does not fit raises :class:`CheckpointMismatchError` naming it."""
    from .hub import cast_for_state_dict

    sd = checkpoint_filter_fn(obj)
    try:
        model, _ = cast_for_state_dict(sd, "state dict")
    except CheckpointFormatError as e:
        raise CheckpointMismatchError(str(e)) from None
    return checkpoint_filter_fn(sd, model)


__all__ = [
    "CAST", "CastOutput", "Hierarchy", "Node", "Predictor", "ModelInfo", "SuperpixelSettings",
    "load_model", "safe_torch_load", "superpixels", "farthest_point_sample", "convert_official_state_dict",
    "checkpoint_filter_fn", "MODEL_NAMES", "PUBLISHED", "BUNDLED",
    "CastError", "CastLoadError", "UnsafeCheckpointError", "CheckpointFormatError", "CheckpointMismatchError",
    "WeightsNotAvailableError", "ImageReadError",
]
