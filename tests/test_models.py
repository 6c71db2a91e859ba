import pytest
import timm
import torch

import cast
from cast.models import MODEL_NAMES, VARIANTS
from tests.helpers import official_keys, random_state_dict, write_deit_file, write_moco_file


def _wide_ones_slow(names) -> list:
    """The base widths (``cast_base*``: seconds to build) run in the slow loop."""
    return [pytest.param(n, marks=pytest.mark.slow if n.startswith("cast_base") else ()) for n in names]


def block_superpixels(batch: int, size: int, cell: int) -> torch.Tensor:
    """Square superpixels of ``cell`` px: ids 0..(size/cell)^2 - 1, row-major."""
    r = torch.arange(size) // cell
    ids = r[:, None] * (size // cell) + r[None, :]
    return ids.expand(batch, -1, -1).clone()


@pytest.mark.parametrize(
    "layout,name,kwargs",
    [
        ("moco_family_cast_small", "cast_small", dict(pos_embed="sincos", num_classes=0)),
        ("moco_family_cast_base", "cast_base", dict(pos_embed="sincos", num_classes=0)),
        ("deit_family_cast_small", "cast_small", dict(pos_embed="learned", num_classes=1000)),
    ],
)
def test_state_dict_equals_published_layout(layout, name, kwargs):
    model = timm.create_model(name, **kwargs)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == dict(official_keys(layout))


@pytest.mark.parametrize("name", _wide_ones_slow(["cast_small_deep", "cast_base_deep"]))
def test_deep_variants_name_stage_blocks_by_global_index(name):
    model = timm.create_model(name, num_classes=0)
    sd = model.state_dict()
    assert {k.split(".")[1] for k in sd if k.startswith("blocks1.")} == {str(i) for i in range(6)}
    assert {k.split(".")[1] for k in sd if k.startswith("blocks4.")} == {"12", "13", "14"}
    assert sd["blocks4.13.attn.qkv.weight"].data_ptr() == sd["blocks.13.attn.qkv.weight"].data_ptr()


@pytest.mark.parametrize("name", _wide_ones_slow(VARIANTS))  # H-CAST's: tests/test_hcast.py and the timm contract
def test_every_variant_forward_backward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=64, num_classes=7, pos_embed="learned", drop_path_rate=0.1)
    model.train()
    images = torch.randn(2, 3, 64, 64)
    sp = block_superpixels(2, 64, 8)  # 64 segments: as many as level-1 clusters
    logits = model(images, sp)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(not n.startswith("pool4.") for n in trainable), "the last pooling is frozen (published)"
    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    assert model.pool1.pool_block.centroid_fc.attn.num_heads == 12


def test_create_model_through_timm_and_headless_features():
    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000)
    assert isinstance(model, cast.CAST) and model.head.out_features == 1000
    backbone = timm.create_model("cast_tiny", num_classes=0, img_size=64).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64), block_superpixels(1, 64, 8))
    assert feats.shape == (1, 192)


def test_forward_hierarchy_outputs(tiny_model):
    images = torch.randn(2, 3, 64, 64)
    sp = block_superpixels(2, 64, 4)  # 256 superpixels -> 64 grid cells: 192 padded ids
    with torch.no_grad():
        out = tiny_model.forward_hierarchy(images, sp)
        logits = tiny_model(images, sp)
    K = tiny_model.num_clusters
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert torch.allclose(out.level_logits[3], logits, atol=1e-5)
    assert [t.shape for t in out.assign_logits] == [(2, 256, K[0]), (2, K[0], K[1]), (2, K[1], K[2]), (2, K[2], K[3])]
    assert [t.shape for t in out.centroid_index] == [(2, k) for k in K]
    assert out.padding.sum(1).tolist() == [256 - 64, 256 - 64]
    for lv, seg in enumerate(out.segments):
        assert seg.shape == (2, 64, 64) and seg.dtype == torch.long
        assert seg.min() >= 0 and seg.max() < K[lv]
    # nesting: a level-l segment lies inside exactly one level-(l+1) segment
    for lv in range(3):
        fine, coarse = out.segments[lv], out.segments[lv + 1]
        for b in range(2):
            for s in fine[b].unique():
                assert coarse[b][fine[b] == s].unique().numel() == 1
    assert out.features.shape == (2, tiny_model.embed_dim)


def test_headless_hierarchy_has_no_logits():
    from tests.helpers import make_tiny_model

    model = make_tiny_model(num_classes=0)
    with torch.no_grad():
        out = model.forward_hierarchy(torch.randn(1, 3, 64, 64), block_superpixels(1, 64, 8))
    assert out.logits is None and out.level_logits is None


# -- published checkpoint conversion -------------------------------------------------------------


@pytest.fixture(scope="module")
def moco_sd():
    return random_state_dict("moco_family_cast_small", seed=1)


@pytest.fixture(scope="module")
def deit_sd():
    return random_state_dict("deit_family_cast_small", seed=2)


def _assert_loads_exactly(converted, reference, **model_kwargs):
    model = timm.create_model("cast_small", **model_kwargs)
    model.load_state_dict(converted, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_convert_moco_file(tmp_path, moco_sd):
    path = write_moco_file(tmp_path / "checkpoint_0099.pth.tar", moco_sd)
    converted = cast.convert_official_state_dict(cast.safe_torch_load(path))
    assert not any(k.startswith(("head.", "module.")) for k in converted)
    _assert_loads_exactly(converted, moco_sd, pos_embed="sincos", num_classes=0)


def test_convert_deit_file_with_namespace(tmp_path, deit_sd):
    path = write_deit_file(tmp_path / "best_checkpoint.pth", deit_sd)
    obj = cast.safe_torch_load(path)  # allow-listed argparse.Namespace
    converted = cast.convert_official_state_dict(obj)
    _assert_loads_exactly(converted, deit_sd, pos_embed="learned", num_classes=1000)


def test_convert_bare_state_dict(deit_sd):
    converted = cast.convert_official_state_dict({"module." + k: v for k, v in deit_sd.items()})
    _assert_loads_exactly(converted, deit_sd, pos_embed="learned", num_classes=1000)


def test_conversion_names_keys_that_do_not_fit(deit_sd):
    model = timm.create_model("cast_small", pos_embed="learned", num_classes=1000)
    broken = dict(deit_sd)
    del broken["pool2.pool_block.fc1.1.weight"]
    broken["pool9.extra"] = torch.zeros(1)
    broken["norm.weight"] = torch.zeros(7)
    with pytest.raises(cast.CheckpointMismatchError) as e:
        cast.checkpoint_filter_fn(broken, model)
    msg = str(e.value)
    assert "pool2.pool_block.fc1.1.weight" in msg and "pool9.extra" in msg and "norm.weight" in msg


def test_published_files_load_with_metadata(tmp_path, moco_sd, deit_sd):
    deit = cast.load_model(write_deit_file(tmp_path / "best_checkpoint.pth", deit_sd))
    assert deit.info.family == "deit" and deit.info.superpixels.params["histogram_bins"] == 5
    assert deit.info.class_names[0] == "tench" and len(deit.info.class_names) == 1000
    assert not deit.training
    moco = cast.load_model(write_moco_file(tmp_path / "checkpoint_0099.pth.tar", moco_sd))
    assert moco.info.family == "mocov3" and moco.info.superpixels.params == {"histogram_bins": 15, "num_iterations": 20}
    assert moco.num_classes == 0 and moco.info.class_names is None


@pytest.mark.parametrize("name", [*MODEL_NAMES, "vit_conv_small"])
def test_models_build_on_the_meta_device(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000)
    assert all(p.is_meta for p in model.parameters())
