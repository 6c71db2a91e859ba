"""Model definitions (``nn.Module``s and their timm registration only; no loading code).

- :mod:`.layers`: blocks shared by the families (ConvStem, LayerNorm, sin-cos positions);
- :mod:`.cast`: CAST, registered as ``cast_tiny``, ``cast_small``, ``cast_small_deep``, ``cast_base``,
  ``cast_base_deep`` (with the published weights as pretrained tags, e.g. ``cast_small.deit_in1k``);
- :mod:`.hcast`: H-CAST, CAST with one head per taxonomy level, registered as ``hcast_tiny``, ``hcast_small``;
- :mod:`.vit_conv`: MoCo-v3's conv-stem ViT baseline, ``vit_conv_small`` / ``vit_conv_base``;
- :mod:`.convert`: what the families' ``checkpoint_filter_fn`` share;
- :mod:`.builder`, :mod:`.features`: what the families' timm factories share (device and dtype,
  input size, ``features_only`` wrappers that pass the superpixels on);
- :mod:`.hub_mixin`: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` in our own format.

Importing this package registers every model with timm.
"""

from .cast import CAST, VARIANTS, CastOutput, GraphPooling, checkpoint_filter_fn, infer_model_args, variant_of
from .hcast import HCAST, HCAST_VARIANTS, hcast_checkpoint_filter_fn, level_classes_of
from .vit_conv import VIT_VARIANTS, ConvStemViT

MODEL_NAMES = tuple(VARIANTS) + tuple(HCAST_VARIANTS)

__all__ = [
    "CAST", "CastOutput", "GraphPooling", "HCAST", "HCAST_VARIANTS", "hcast_checkpoint_filter_fn", "level_classes_of",
    "ConvStemViT", "checkpoint_filter_fn", "infer_model_args", "variant_of",
    "MODEL_NAMES", "VARIANTS", "VIT_VARIANTS",
]
