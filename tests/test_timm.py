"""timm's generic model checks (its own tests/test_models.py), adapted only for CAST's two inputs
(images and superpixels) and its fixed input size, for every registered ``cast_*`` model; the
published weights as pretrained tags; timm's data config; torch.compile."""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_grad_checkpointing(name):
    model = create(name).eval()
    x, sp = inputs(1)
    out = model(x, sp)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    assert torch.allclose(model(x, sp), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_every_parameter_gets_a_gradient(name):
    model = create(name, num_classes=42, drop_path_rate=0.1).train()
    x, sp = inputs(2)
    out = model(x, sp)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert sum(p.numel() for p in model.parameters()) == sum(p.grad.numel() for p in model.parameters())
    assert out.shape[-1] == 42 and not torch.isnan(out).any()
    # what cannot learn is a buffer, still saved under the published names
    buffers = dict(model.named_buffers())
    assert "pool4.pool_block.fc1.1.weight" in buffers and "pool4.pool_block.fc1.1.weight" in model.state_dict()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_cfgs_non_std(name):
    model = create(name).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0 and model.in_chans == 3
    state_dict, cfg = model.state_dict(), model.default_cfg
    x, sp = inputs(1)
    outputs = model.forward_features(x, sp)
    pre = model.forward_head(outputs, pre_logits=True)
    assert outputs.shape[-1] == model.num_features and pre.shape[1] == model.head_hidden_size
    assert model.get_classifier() is model.head
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x, sp)
    assert out.shape == pre.shape and out.shape[1] == model.head_hidden_size
    model.reset_classifier(7, "avg")
    assert model(x, sp).shape == (1, 7)
    assert create(name, num_classes=0).eval()(x, sp).shape[-1] == model.num_features
    if cfg.get("num_classes"):
        assert cfg["classifier"] + ".weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict
    assert cfg["crop_pct"] == 1.0 and cfg["fixed_input_size"] and cfg["input_size"] == (3, SIZE, SIZE)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_features_only(name):
    model = create(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 4
    x, sp = inputs(1)
    outputs = model(x, sp)
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[1] == c and o.shape[0] == 1 and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(SIZE / r) + 1 and o.shape[3] <= math.ceil(SIZE / r) + 1
    picked = create(name, features_only=True, out_indices=(1, 3))
    assert picked.feature_info.channels() == [channels[1], channels[3]] and len(picked(x, sp)) == 2


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_intermediates_and_prune_contract(name):
    model = create(name).eval()
    x, sp = inputs(1)
    final, inter = model.forward_intermediates(x, sp)
    assert len(inter) == 4 and all(t.shape == (1, model.num_features, SIZE // 8, SIZE // 8) for t in inter)
    assert torch.allclose(final, model.forward_features(x, sp))
    tokens, assigns = model.forward_intermediates(x, sp, output_fmt="NLC", intermediates_only=True,
                                                  return_assignments=True)
    assert [t.shape[1] for t in tokens] == [64, *model.num_clusters[:3]]
    # each grid cell of a map holds the token of its superpixel's segment at that stage
    for grid, tok, a in zip(inter, tokens, assigns):
        cells = a[0][sp[0, ::8, ::8].reshape(-1)]
        assert torch.allclose(grid[0].flatten(1).t(), tok[0][cells])
    model.set_grad_checkpointing()
    assert torch.allclose(model.forward_intermediates(x, sp)[0], final, rtol=1e-4, atol=1e-5)
    model.set_grad_checkpointing(False)
    kept_before = model.forward_intermediates(x, sp, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    kept_after = model.forward_intermediates(x, sp, indices=[0, 1], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(kept_before, kept_after))
    assert model.pool2 is None and model.num_classes == 0 and len(model.blocks) == sum(model.depths[:2])
    with pytest.raises(RuntimeError, match="pruned"):
        model.forward_hierarchy(x, sp)


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


@pytest.mark.slow  # writes and reads full-size published-layout files (up to cast_base)
def test_pretrained_true_for_every_published_tag_through_an_offline_hub_cache(hub_cache, tmp_path):
    files, states = {}, {}
    for name, w in PUBLISHED.items():
        states[name] = sd = _state(name)
        path = tmp_path / name.replace(".", "_")
        files[w.hub_file] = write_deit_file(path, sd) if w.family == "deit" else write_moco_file(path, sd, momentum=False)
    populate_hub_cache(hub_cache, "twke/CAST", files, commit="b" * 40)
    for name in PUBLISHED:
        model = timm.create_model(name, pretrained=True)
        got = model.state_dict()
        assert set(got) == set(states[name]) and all(torch.equal(got[k], v) for k, v in states[name].items()), name
        assert model.info.weights == name
    # another head: timm drops the published one and gives a fresh head of the asked size
    tuned = timm.create_model("cast_small.deit_in1k", pretrained=True, num_classes=5)
    assert tuned.head.out_features == 5
    assert torch.equal(tuned.state_dict()["norm.weight"], states["cast_small.deit_in1k"]["norm.weight"])
    feats = timm.create_model("cast_small.mocov3_in1k", pretrained=True, features_only=True)
    assert feats.feature_info.channels() == [384] * 4


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
