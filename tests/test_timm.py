"""CAST through timm beyond the generic contract (``test_timm_contract.py``): what the stage maps
hold, the published weights as pretrained tags, timm's data config, torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cast
from cast.models import MODEL_NAMES
from cast.weights import PUBLISHED
from tests.helpers import populate_hub_cache, write_deit_file, write_moco_file

SIZE = 64  # the checks run at a small fixed size (CAST takes any multiple of 8 it was built for)


def inputs(batch: int = 2, size: int = SIZE, cell: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and square superpixels of ``cell`` px (``(size / cell)^2`` ids)."""
    r = torch.arange(size) // cell
    sp = (r[:, None] * (size // cell) + r[None, :]).expand(batch, -1, -1).clone()
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), sp


def create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, img_size=SIZE, **kwargs)


def test_stage_maps_hold_the_token_of_each_cells_segment(tiny_model):
    """``forward_intermediates``: an ``NCHW`` map cell holds the ``NLC`` token of the segment its
    superpixel belongs to at that stage (``return_assignments``)."""
    x, sp = inputs(1)
    maps = tiny_model.forward_intermediates(x, sp, intermediates_only=True)
    tokens, assigns = tiny_model.forward_intermediates(x, sp, output_fmt="NLC", intermediates_only=True,
                                                       return_assignments=True)
    assert [t.shape[1] for t in tokens] == [64, *tiny_model.num_clusters[:3]]
    for grid, tok, a in zip(maps, tokens, assigns):
        cells = a[0][sp[0, ::8, ::8].reshape(-1)]
        assert torch.allclose(grid[0].flatten(1).t(), tok[0][cells])
    # the assignments are the tree's: level l's assignment is stage l+1's token index
    out = tiny_model.forward_hierarchy(x, sp)
    for stage in range(1, 4):
        assert torch.equal(assigns[stage], out.token_labels[stage - 1])


def test_published_tags_are_registered_with_their_metadata():
    tags = {t for t in timm.list_pretrained("cast*")} | set(timm.list_pretrained("vit_conv*"))
    assert tags == set(PUBLISHED)
    for name, w in PUBLISHED.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.num_classes) == (w.hub_repo, w.hub_file, w.num_classes)
        assert cfg.crop_pct == 1.0 and cfg.crop_mode == "squash" and cfg.fixed_input_size and cfg.license == "mit"
        assert cfg.first_conv == "patch_embed.proj.0" and cfg.classifier == "head" and "arXiv:2210.00314" in str(cfg.paper_ids)
        model = timm.create_model(name, device="meta")
        assert model.num_classes == w.num_classes
        if w.arch in MODEL_NAMES:
            assert model.pos_embed_type == w.pos_embed  # the tag picks what its weights need
    assert timm.create_model("cast_small", device="meta").pos_embed_type == "learned"  # default tag: DeiT
    assert timm.create_model("cast_small.mocov3_in1k", device="meta", num_classes=10).num_classes == 10  # kwargs win


def test_data_config_resizes_the_whole_image_without_a_crop():
    model = timm.create_model("cast_small.deit_in1k", device="meta")
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["crop_pct"] == 1.0 and cfg["input_size"] == (3, 224, 224)
    transform = timm.data.create_transform(**cfg)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (200, 330, 3), dtype=np.uint8))
    predictor = cast.Predictor(timm.create_model("cast_tiny", img_size=224, num_classes=0))
    ours = predictor.normalise(predictor.to_model_image(np.asarray(img))[None])[0]
    assert torch.allclose(transform(img), ours, atol=1e-6)  # what the model sees, every pixel of it
    small = timm.create_model("cast_tiny", img_size=160, device="meta")
    assert timm.data.resolve_data_config({}, model=small)["input_size"] == (3, 160, 160)


def _state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in timm.create_model(name).state_dict().items()}


@pytest.mark.slow  # writes and reads full-size published-layout files (up to cast_base_deep), one at a time
def test_pretrained_true_for_every_published_tag_through_an_offline_hub_cache(hub_cache, tmp_path):
    for name, w in PUBLISHED.items():
        sd = _state(name)
        path = tmp_path / name.replace(".", "_")
        write_deit_file(path, sd) if w.family == "deit" else write_moco_file(path, sd, momentum=False)
        commit = populate_hub_cache(hub_cache, "twke/CAST", {w.hub_file: path}, commit="b" * 40)
        for model in (timm.create_model(name, pretrained=True), cast.load_model(name)):
            got = model.state_dict()
            assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items()), name
            assert model.info.weights == name
        if name == "cast_small.deit_in1k":
            # another head: timm drops the published one and gives a fresh head of the asked size
            tuned = timm.create_model(name, pretrained=True, num_classes=5)
            assert tuned.head.out_features == 5
            assert torch.equal(tuned.state_dict()["norm.weight"], sd["norm.weight"])
        if name == "cast_small.mocov3_in1k":
            assert timm.create_model(name, pretrained=True, features_only=True).feature_info.channels() == [384] * 4
        if name in ("cast_small_deep.deit_in1k", "cast_base_deep.mocov3_in1k", "vit_conv_small.mocov3_in1k"):
            # what timm's own pretrained checks ask: one input channel (the first convolution summed), features
            gray = timm.create_model(name, pretrained=True, in_chans=1, num_classes=5)
            first = sd["patch_embed.proj.0.weight"]
            assert gray.patch_embed.proj[0].weight.shape[1] == 1 and gray.num_classes == 5
            assert torch.allclose(gray.patch_embed.proj[0].weight, first.sum(1, keepdim=True))
            assert gray.in_chans == 1
            feats = timm.create_model(name, pretrained=True, features_only=True)
            assert torch.equal(feats.model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
        # the files are 0.1-0.9 GB: one on disk at a time
        (hub_cache / "models--twke--CAST" / "snapshots" / commit / w.hub_file).unlink()
        path.unlink()


@pytest.mark.slow  # compiles (tens of seconds on 2 cores)
def test_compiled_forward_equals_eager_without_graph_breaks(tiny_model):
    x, sp = inputs(1, size=64, cell=4)  # 256 superpixels, 192 of them padding
    explained = torch._dynamo.explain(tiny_model.forward_hierarchy)(x, sp, 256)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(tiny_model.forward_hierarchy)
    with torch.no_grad():
        eager, comp = tiny_model.forward_hierarchy(x, sp, 256), compiled(x, sp, 256)
    for a, b in zip(eager.token_labels + eager.centroid_index, comp.token_labels + comp.centroid_index):
        assert torch.equal(a, b)
    assert torch.allclose(eager.logits, comp.logits, atol=1e-5) and torch.allclose(eager.features, comp.features, atol=1e-5)
