"""The published architecture's outputs stay what they were: cast_small in the DeiT and MoCo-v3
layouts (fixed random weights with the published keys) on two photos and their stored superpixels,
against outputs recorded from this implementation when it matched the reference implementation.
Any change to the model code that moves a centroid, an assignment or a logit fails here."""

from pathlib import Path

import numpy as np
import pytest
import torch

import cast
from cast.loading import cast_for_state_dict
from cast.weights import IMAGENET_MEAN, IMAGENET_STD
from tests.helpers import random_state_dict

REFERENCE = Path(__file__).resolve().parent / "data" / "published_layout_outputs.npz"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.mark.parametrize("layout", ["deit_family_cast_small", "moco_family_cast_small"])
def test_published_layout_outputs_are_unchanged(reference, layout):
    prefix = layout.split("_")[0]
    sd = cast.convert_official_state_dict(random_state_dict(layout, seed=0))
    model, _ = cast_for_state_dict(sd)
    model.load_state_dict(sd)
    model.eval()
    x = torch.from_numpy(reference["images"]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    sp = torch.from_numpy(reference[f"{prefix}_superpixels"].astype(np.int64))
    with torch.no_grad():
        out = model.forward_hierarchy(x, sp)
    for lv in range(4):
        np.testing.assert_array_equal(out.token_labels[lv].numpy(), reference[f"{prefix}_token_labels_{lv}"])
        np.testing.assert_array_equal(out.centroid_index[lv].numpy(), reference[f"{prefix}_centroid_index_{lv}"])
    np.testing.assert_allclose(out.features.numpy(), reference[f"{prefix}_features"], rtol=1e-4, atol=1e-4)
    if prefix == "deit":
        np.testing.assert_allclose(out.logits.numpy(), reference["deit_logits"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(torch.stack(out.level_logits).numpy(), reference["deit_level_logits"], rtol=1e-4, atol=1e-4)
    else:
        assert out.logits is None
