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
    from .hub import _arch_for, build_model
    from .models.cast import infer_model_args

    sd = checkpoint_filter_fn(obj)
    try:
        args = infer_model_args(sd)
    except (KeyError, IndexError) as e:
        raise CheckpointMismatchError(f"not a CAST state dict: no {e} entry") from None
    arch = _arch_for(args)
    if arch is None:
        raise CheckpointMismatchError(f"width {args['embed_dim']} / depths {args['depths']} match no registered variant")
    model = build_model(arch, pos_embed=args["pos_embed"], num_classes=args["num_classes"], img_size=args["img_size"])
    return checkpoint_filter_fn(sd, model)


__all__ = [
    "CAST", "CastOutput", "Hierarchy", "Node", "Predictor", "ModelInfo", "SuperpixelSettings",
    "load_model", "safe_torch_load", "superpixels", "farthest_point_sample", "convert_official_state_dict",
    "checkpoint_filter_fn", "MODEL_NAMES", "PUBLISHED", "BUNDLED",
    "CastError", "CastLoadError", "UnsafeCheckpointError", "CheckpointFormatError", "CheckpointMismatchError",
    "WeightsNotAvailableError", "ImageReadError",
]
