"""Model definitions (``nn.Module``s only). Importing this registers the CAST variants with timm."""

from .cast import CAST, VARIANTS, CastOutput, GraphPooling, checkpoint_filter_fn, infer_model_args

MODEL_NAMES = tuple(VARIANTS)

__all__ = ["CAST", "CastOutput", "GraphPooling", "checkpoint_filter_fn", "infer_model_args", "MODEL_NAMES", "VARIANTS"]
