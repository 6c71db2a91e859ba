"""timm's model contract, checked for every registered ``cast_*``, ``hcast_*`` and ``vit_conv_*`` model: what timm's
generic model tests (its ``tests/test_models.py``) ask of a model, written for our families (CAST and
H-CAST take images and superpixels, H-CAST returns one logits tensor per taxonomy level; all have a
fixed input size, so the checks run at 64 px).

Contracts: forward and backward, default cfgs at the standard and a non-standard input size, the
API timm's optimizer factory relies on, creation on the meta device, ``features_only`` with every
``feature_cls``, ``forward_intermediates`` and ``prune_intermediate_layers``. The small models run in
the fast loop, the larger sizes in the slow one. The costliest checks (pruning, features_only's options,
hooks and FX) run once per depth layout, at its smallest width: the wider models of a layout
(``cast_base`` has ``cast_small``'s stages at twice the width) run the very same code paths, as timm's
own tests keep such checks to small models.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import itertools
import math

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet
from timm.models._manipulate import group_parameters
from timm.optim import param_groups_layer_decay

import cast  # noqa: F401  (registers the models)
from cast.models import MODEL_NAMES, VIT_VARIANTS

SIZE = 64
SMALL = ("cast_tiny", "hcast_tiny", "vit_conv_small")
ALL = tuple(timm.list_models(["cast_*", "hcast_*", "vit_conv_*"]))
MODELS = [pytest.param(n, marks=() if n in SMALL else pytest.mark.slow) for n in ALL]
ONE_PER_LAYOUT = ("cast_tiny", "cast_small_deep", "hcast_tiny", "vit_conv_small")  # the smallest width of each depth layout
LAYOUTS = [pytest.param(n, marks=() if n in SMALL else pytest.mark.slow) for n in ONE_PER_LAYOUT]
_BUILT: dict[str, torch.nn.Module] = {}  # the current model's builds, copied for each use


@pytest.fixture(scope="module", params=MODELS)
def name(request):
    """The model under test. Module-scoped, so pytest runs every check of one model before the
    next, and each of its builds (seconds for cast_base_deep) happens once."""
    yield request.param
    _BUILT.clear()


def test_every_family_model_is_checked():
    assert set(ALL) == set(MODEL_NAMES) | set(VIT_VARIANTS) and set(SMALL) <= set(ALL)


def _layout(name: str) -> tuple:
    model = timm.create_model(name, device="meta")
    return name.split("_")[0], tuple(getattr(model, "depths", ())), len(model.blocks), model.embed_dim


def test_every_model_shares_its_depth_layout_with_a_narrower_or_equal_fully_checked_one():
    checked = {layout[:3]: layout[3] for layout in map(_layout, ONE_PER_LAYOUT)}
    assert len(checked) == len(ONE_PER_LAYOUT) and set(ONE_PER_LAYOUT) <= set(ALL)
    for name in ALL:
        *layout, width = _layout(name)
        assert tuple(layout) in checked and checked[tuple(layout)] <= width, f"{name}: its layout is not checked in full"


def takes_superpixels(name: str) -> bool:
    return name.startswith(("cast", "hcast"))


def fine(out):
    """The (fine level's) logits: H-CAST returns a tuple, fine -> coarse."""
    return out[0] if isinstance(out, tuple) else out


def inputs(name: str, batch: int = 1, size: int = SIZE, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """What the model's forward takes: images, plus 8-px square superpixels for CAST."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
    if not takes_superpixels(name):
        return (x,)
    r = torch.arange(size, device=device) // 8
    return x, (r[:, None] * (size // 8) + r[None, :]).expand(batch, -1, -1).clone()


def create(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, img_size=64, **kwargs)`` with seed 0: a fresh copy of one build."""
    kwargs = {"img_size": SIZE, **kwargs}
    key = repr((name, sorted(kwargs.items(), key=str)))
    if _BUILT and next(iter(_BUILT.values())).default_cfg.get("architecture") != name:
        _BUILT.clear()  # another model's builds (a test parametrized over models itself)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = timm.create_model(name, **kwargs)
    return copy.deepcopy(_BUILT[key])


# -- forward, backward, cfgs -------------------------------------------------------------------


def test_forward_equals_with_grad_checkpointing(name):
    model = create(name).eval()
    x = inputs(name)
    out = model(*x)
    assert fine(out).shape[0] == 1 and not torch.isnan(fine(out)).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(*x), out, rtol=1e-4, atol=1e-5)


def test_backward_reaches_every_parameter(name):
    model = create(name, num_classes=42).train()
    out = model(*inputs(name, batch=2))
    sum(o.mean() for o in (out if isinstance(out, tuple) else (out,))).backward()  # every level's head
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert sum(p.numel() for p in model.parameters()) == sum(p.grad.numel() for p in model.parameters())
    assert fine(out).shape == (2, 42) and not torch.isnan(fine(out)).any()


@pytest.mark.parametrize("size", [None, SIZE])  # the pretrained cfg's 224 (on the meta device), and a smaller one
def test_default_cfg_and_head(name, size):
    device = "meta" if size is None else "cpu"
    model = timm.create_model(name, device=device, **({} if size is None else {"img_size": size})).eval()
    cfg = model.default_cfg
    side = cfg["input_size"][-1]
    assert cfg["input_size"] == (model.in_chans, side, side) == (3, size or 224, size or 224)
    assert cfg["fixed_input_size"] and cfg["crop_pct"] == 1.0 and cfg["mean"] == (0.485, 0.456, 0.406)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    if cfg.get("num_classes"):
        assert cfg["classifier"] + ".weight" in state and model.num_classes == cfg["num_classes"]
    x = inputs(name, size=side, device=device)
    features = model.forward_features(*x)
    pre = model.forward_head(features, pre_logits=True)
    assert features.ndim == 3 and features.shape[-1] == model.num_features and pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(*x).shape == pre.shape
    headless = timm.create_model(name, device=device, num_classes=0, **({} if size is None else {"img_size": size}))
    assert headless(*x).shape == (1, headless.num_features) == (1, headless.head_hidden_size)


# -- what timm's optimizer factory and model creation rely on ----------------------------------


def test_unknown_arguments_raise_type_error(name):
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model(name, device="meta", not_a_model_arg=1)
    with pytest.raises(TypeError, match="not_a_model_arg"):
        timm.create_model(name, device="meta", features_only=True, not_a_model_arg=1)


def test_no_weight_decay_and_group_matcher_name_real_parameters(name):
    model = timm.create_model(name, device="meta")
    params = [n for n, _ in model.named_parameters()]
    for entry in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, entry) for n in params), f"no_weight_decay() names {entry!r}, not a parameter"
    assert "cls_token" in model.no_weight_decay()
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert sorted(groups) == sorted(params), "every parameter in exactly one group"
        order = [groups[n] for n in params]
        assert len(set(order)) > 1 and order[0] == 0 and groups[params[-1]] == max(order)
    if takes_superpixels(name):  # a graph pooling trains with the last block of its stage
        groups = group_parameters(model, model.group_matcher(), reverse=True)
        last = list(itertools.accumulate(model.depths))
        for stage in range(3):
            assert groups[f"pool{stage + 1}.pool_block.fc1.1.weight"] == groups[f"blocks.{last[stage] - 1}.mlp.fc2.weight"]
    # the groups drive timm's layer-wise learning-rate decay
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_reset_classifier_keeps_the_pooling_device_dtype_and_mode(name):
    assert inspect.signature(timm.create_model(name, device="meta").reset_classifier).parameters["global_pool"].default is None
    model = create(name, **({"global_pool": "avg"} if takes_superpixels(name) else {})).eval()
    x = inputs(name, batch=2)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(*x), pre_logits=True)
        model.reset_classifier(5)
        torch.testing.assert_close(model.forward_head(model.forward_features(*x), pre_logits=True), pooled)
        assert fine(model(*x)).shape == (2, 5) and not model.head.training
    model.to(device="meta", dtype=torch.float64).train()
    model.reset_classifier(0)
    model.reset_classifier(3)
    head = list(model.get_classifier().parameters())
    assert head and all(p.device.type == "meta" and p.dtype == torch.float64 for p in head)
    assert all(m.training for m in model.modules())
    frozen = timm.create_model(name, device="meta").requires_grad_(False)
    frozen.reset_classifier(0)
    assert not [n for n, p in frozen.named_parameters() if p.requires_grad]


def test_creation_and_forward_on_the_meta_device(name):
    model = timm.create_model(name, device="meta", dtype=torch.float32)
    misplaced = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if not t.is_meta]
    assert not misplaced, f"not created on meta: {misplaced[:5]}"
    with torch.device("meta"):
        model = timm.create_model(name, device="meta", dtype=torch.float32).eval()
    x = inputs(name, size=224, device="meta")  # shapes only: CAST reads no superpixel count from them
    assert model.forward_features(*x).is_meta
    model.to(torch.bfloat16)
    out = fine(model(x[0].to(torch.bfloat16), *x[1:]))
    assert out.dtype == torch.bfloat16 and out.shape == (1, model.num_classes or model.num_features)


def test_bfloat16_forward_on_the_cpu():
    model = create("cast_tiny").eval().to(torch.bfloat16)
    x, sp = inputs("cast_tiny")
    with torch.no_grad():
        out = model(x.to(torch.bfloat16), sp)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# -- features_only --------------------------------------------------------------------------------


def _check_maps(model, outputs, size=SIZE):
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == len(outputs) >= 3
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[:2] == (1, c) and not torch.isnan(o).any()
        assert size / (2 * r) < o.shape[2] <= math.ceil(size / r) + 1 and size / (2 * r) < o.shape[3] <= math.ceil(size / r) + 1


# every feature_cls on the small models; the larger ones use the same wrapper
FEATURE_CASES = [pytest.param(n, None, marks=() if n in SMALL else pytest.mark.slow) for n in ALL] + [
    pytest.param(n, cls) for n in SMALL for cls in ("getter", "list", FeatureGetterNet)]


@pytest.mark.parametrize(("name", "feature_cls"), FEATURE_CASES)
def test_features_only_maps(name, feature_cls):
    model = create(name, features_only=True, **({} if feature_cls is None else {"feature_cls": feature_cls})).eval()
    assert isinstance(model, FeatureGetterNet) and model.default_cfg["input_size"] == (3, SIZE, SIZE)
    x = inputs(name)
    with torch.no_grad():
        outputs = model(*x)
    _check_maps(model, outputs)
    full = create(name).eval()  # the same weights (same seed): the maps are its intermediates
    with torch.no_grad():
        expected = full.forward_intermediates(*x, indices=model.out_indices, intermediates_only=True)
    for a, b in zip(outputs, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", LAYOUTS)
def test_features_only_options(name):
    x = inputs(name)
    picked = create(name, features_only=True, out_indices=(1, 3), feature_cfg=dict(norm=True)).eval()
    assert picked.feature_info.channels() == [picked.model.num_features] * 2 and picked.out_indices == [1, 3]
    assert not isinstance(picked.model.norm, torch.nn.Identity)  # kept: the features are normed
    with torch.no_grad():
        normed = picked(*x)
        as_dict = create(name, features_only=True, out_indices=(1, 3), feature_cls="dict", feature_cfg=dict(norm=True)).eval()(*x)
    assert list(as_dict) == picked.feature_info.module_name()
    for a, b in zip(normed, as_dict.values()):
        torch.testing.assert_close(a, b)
    model = create(name, features_only=True).train()  # as a detection backbone trains it
    sum(f.square().mean() for f in model(*inputs(name, batch=2))).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None], "pruned to what the features need"


@pytest.mark.parametrize("name", LAYOUTS)
def test_features_only_hook_and_fx(name):
    x = inputs(name)
    hooked = create(name, features_only=True, feature_cls="hook").eval()
    with torch.no_grad():
        raw = hooked(*x)
        reference = create(name).eval()
        _, tokens = reference.forward_intermediates(*x, indices=hooked.feature_info.out_indices, output_fmt="NLC")
    # a stage module's raw output: [CLS] first, then that stage's tokens
    assert [r.shape[1] for r in raw] == [t.shape[1] + 1 for t in tokens]
    for r, t in zip(raw, tokens):
        torch.testing.assert_close(r[:, 1:], t)
    if takes_superpixels(name):
        with pytest.raises(ValueError, match="getter"):
            create(name, features_only=True, feature_cls="fx")
    else:
        traced = create(name, features_only=True, feature_cls="fx").eval()
        with torch.no_grad():
            for a, b in zip(traced(*x), raw):
                torch.testing.assert_close(a, b)
    with pytest.raises(AssertionError, match="Unknown feature class"):  # what timm says of a name it does not know
        create(name, features_only=True, feature_cls="not_a_feature_cls")


# -- forward_intermediates -------------------------------------------------------------------------


def test_forward_intermediates(name):
    model = create(name).eval()
    x = inputs(name)
    n = len(model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(*x)
        torch.testing.assert_close(final, model.forward_features(*x), rtol=1e-5, atol=1e-8)
        assert len(maps) == n and all(m.shape == (1, model.num_features, SIZE // f["reduction"], SIZE // f["reduction"])
                                      for m, f in zip(maps, model.feature_info))
        tokens = model.forward_intermediates(*x, output_fmt="NLC", intermediates_only=True)
        assert len(tokens) == n and all(t.ndim == 3 and t.shape[-1] == model.num_features for t in tokens)
        for index, take in (([-1], [n - 1]), (n - 2, range(2, n)), ([0, n - 1], [0, n - 1]), (1, [n - 1])):
            picked = model.forward_intermediates(*x, indices=index, intermediates_only=True)  # an int: the last ones
            expected = [maps[i] for i in take]
            assert len(picked) == len(expected) and all(torch.equal(a, b) for a, b in zip(picked, expected))
            _, early = model.forward_intermediates(*x, indices=index, stop_early=True)
            assert all(torch.equal(a, b) for a, b in zip(early, expected))
        normed = model.forward_intermediates(*x, norm=True, output_fmt="NLC", intermediates_only=True)
        for a, t in zip(normed, tokens):
            torch.testing.assert_close(a, model.norm(t))
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(*x, output_fmt="NHWC")
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(*x)[0], final, rtol=1e-4, atol=1e-5)


# -- prune_intermediate_layers ---------------------------------------------------------------------


def _patterns(n: int) -> list[list[int]]:
    """Every index pattern: each single stage, from the first to every later one, all."""
    return [[i] for i in range(n)] + [[0, i] for i in range(1, n)] + [list(range(n))]


@pytest.mark.parametrize("name", LAYOUTS)
def test_prune_keeps_what_the_kept_intermediates_need(name):
    model = create(name, drop_rate=0.5).eval() if takes_superpixels(name) else create(name).eval()
    x = inputs(name, batch=2)
    n = len(model.feature_info)
    with torch.no_grad():
        expected = model(*x)
        taps = model.forward_intermediates(*x, intermediates_only=True)
        kept = copy.deepcopy(model)
        assert kept.prune_intermediate_layers([n - 1], prune_head=False) == [n - 1]
        torch.testing.assert_close(kept(*x), expected)  # nothing the output needs was pruned
    if name == "cast_tiny":  # every index pattern, with and without the norm
        cases = list(itertools.product(_patterns(n), (False, True)))
    elif name == "hcast_tiny":  # the same backbone: every index pattern, the norm pruned on every other one
        cases = [(indices, i % 2 == 1) for i, indices in enumerate(_patterns(n))]
    elif takes_superpixels(name):  # the same code at other depths: each stage once
        cases = [([i], i % 2 == 1) for i in range(n)] + [(list(range(n)), True)]
    else:
        cases = [([0], False), ([n - 1], True), ([0, n // 2], False), (list(range(n)), True)]
    for indices, prune_norm in cases:
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        assert take == indices
        with torch.no_grad():
            got = pruned.forward_intermediates(*x, indices=take, intermediates_only=True)
            assert all(torch.equal(a, taps[i]) for a, i in zip(got, take)), f"pruned to {indices}"
            final, _ = pruned.forward_intermediates(*x, indices=take)
            torch.testing.assert_close(pruned.forward_features(*x), final, rtol=0, atol=0)
            assert torch.equal(pruned(*x), pruned(*x))  # eval stays eval: no dropout switched on
            assert pruned(*x).shape == (2, pruned.num_features)  # the head went with the pruning
        pruned.train()
        got = pruned.forward_intermediates(*x, indices=take, norm=not prune_norm, intermediates_only=True)
        (sum(f.sum() for f in got) + pruned.forward_features(*x).sum()).backward()
        unused = [k for k, p in pruned.named_parameters() if p.grad is None]
        assert not unused, f"pruned to {indices}: parameters nothing uses: {unused[:5]}"


def test_a_pruned_cast_refuses_the_hierarchy_and_reports_its_stages():
    model = create("cast_tiny").eval()
    x, sp = inputs("cast_tiny")
    model.prune_intermediate_layers([1])
    assert model.num_stages == 2 and model.pool2 is None and len(model.blocks) == sum(model.depths[:2])
    assert model.forward_features(x, sp).shape[1] == 1 + 64  # stage 2 works on the 64 level-1 segments
    with pytest.raises(RuntimeError, match="pruned"):
        model.forward_hierarchy(x, sp)
    with pytest.raises(AssertionError):
        model.forward_intermediates(x, sp, indices=[3])
