"""H-CAST: hierarchical heads on CAST's stages, official-layout checkpoints, taxonomies.

The official layout (``docs/architecture.md``, H-CAST): a DeiT training dict whose ``model`` holds
CAST-S's DeiT keys plus ``head`` (fine), ``family_head`` and, with 3 levels, ``manufacturer_head``.
The files here are written in that layout with random weights; what each head reads is checked
against the stage outputs hooked from the backbone and the file's own tensors.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import timm
import torch

import cast
from cast.errors import CastLoadError, CheckpointMismatchError
from cast.loading import save_own_format
from cast.models import HCAST
from cast.taxonomy import Taxonomy, TaxonomyError, hierarchical_metrics, load_taxonomy
from tests.helpers import random_state_dict, write_deit_file

SIZE = 224  # the published layout's positions are for 224 px (28 x 28 cells)
HEADS = ("head", "family_head", "manufacturer_head")


def official_hcast_sd(levels: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """CAST-S DeiT keys plus one head per level, fine -> coarse, random (the H-CAST layout)."""
    sd = {k: v for k, v in random_state_dict("deit_family_cast_small", seed).items() if not k.startswith("head.")}
    g = torch.Generator().manual_seed(seed + 1)
    for name, n in zip(HEADS, levels):
        sd[f"{name}.weight"] = torch.randn(n, 384, generator=g) * 0.05
        sd[f"{name}.bias"] = torch.randn(n, generator=g) * 0.05
    return sd


def inputs(batch: int = 1, size: int = SIZE, cell: int = 16):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    r = torch.arange(size) // cell
    return x, (r[:, None] * (size // cell) + r[None, :]).expand(batch, -1, -1).clone()  # 196 superpixels


def stage_outputs(model: HCAST, x, sp) -> list[torch.Tensor]:
    """The ``[B, 1 + N, C]`` output of every stage's blocks, hooked from the backbone."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [getattr(model, f"blocks{s + 1}").register_forward_hook(lambda m, a, out, s=s: seen.__setitem__(s, out))
             for s in range(4)]
    try:
        with torch.no_grad():
            out = model(x, sp)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(seen) == [0, 1, 2, 3]
    return [seen[s] for s in range(4)], out


def linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def layer_norm(sd, x):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


# -- loading official files --------------------------------------------------------------------------


@pytest.mark.parametrize("levels, reads", [((20, 6, 3), (1, 2, 3)), ((12, 4), (2, 3))])
def test_an_official_file_loads_exactly_and_each_head_reads_its_stage(tmp_path, levels, reads):
    sd = official_hcast_sd(levels)
    path = write_deit_file(tmp_path / "best_checkpoint.pth", sd)
    model = cast.load_model(path)
    assert isinstance(model, HCAST) and model.info.name == "hcast_small" and model.info.family == "deit"
    assert model.level_classes == list(levels) and model.num_classes == levels[0]
    state = model.state_dict()
    assert set(state) == set(sd), "no missing or unexpected keys"
    assert all(torch.equal(state[k], sd[k]) for k in sd)
    x, sp = inputs()
    outputs, logits = stage_outputs(model, x, sp)
    assert len(logits) == len(levels)
    for level, (name, stage) in enumerate(zip(HEADS, reads)):
        cls = outputs[stage][:, 0]
        if stage == 3:  # only the last stage's [CLS] is normed
            cls = layer_norm(sd, cls)
        torch.testing.assert_close(logits[level], linear(sd, name, cls), rtol=1e-4, atol=1e-5)
    assert model.tree_levels == reads
    with torch.no_grad():  # the one-pass classify the predictor uses: the fine head, and the final pooled feature
        fine, feats = model.classify_embed(x, sp)
        torch.testing.assert_close(fine, logits[0])
        torch.testing.assert_close(feats, model.forward_head(model.forward_features(x, sp), pre_logits=True))


def test_the_hierarchy_gives_each_level_and_segment_its_head(tmp_path):
    sd = official_hcast_sd((20, 6, 3))
    model = cast.load_model(write_deit_file(tmp_path / "h.pth", sd))
    x, sp = inputs()
    outputs, logits = stage_outputs(model, x, sp)
    with torch.no_grad():
        out = model.forward_hierarchy(x, sp)
    assert out.taxonomy_tree_levels == (1, 2, 3) and out.level_logits is None
    torch.testing.assert_close(out.logits, logits[0])
    for level, stage in enumerate((1, 2, 3)):
        torch.testing.assert_close(out.taxonomy_logits[level], logits[level], rtol=1e-4, atol=1e-5)
        tokens = outputs[stage][:, 1:]  # the level-`stage` segments' own tokens, read by this level's head
        if stage == 3:
            tokens = layer_norm(sd, tokens)
        assert out.segment_taxonomy_logits[level].shape == (1, model.num_clusters[stage - 1], (20, 6, 3)[level])
        torch.testing.assert_close(out.segment_taxonomy_logits[level], linear(sd, HEADS[level], tokens), rtol=1e-4, atol=1e-5)
    flat = cast.load_model(write_deit_file(tmp_path / "flat.pth", random_state_dict("deit_family_cast_small")))
    with torch.no_grad():
        assert flat.forward_hierarchy(x, sp).taxonomy_logits is None


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_the_hierarchy_reads_the_heads_as_forward_does_for_either_pooling(global_pool):
    model = timm.create_model("hcast_tiny", level_classes=(7, 3), global_pool=global_pool).eval()
    x, sp = inputs(batch=2)
    with torch.no_grad():
        logits, out = model(x, sp), model.forward_hierarchy(x, sp)
        for mine, theirs in zip(out.taxonomy_logits, logits, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
        if global_pool == "avg":  # the segments' mean, not [CLS]: a different input than token pooling's
            model.global_pool = "token"
            assert not torch.allclose(model(x, sp)[0], logits[0], atol=1e-3)


def test_files_that_do_not_fit_are_refused_with_their_keys(tmp_path):
    sd = official_hcast_sd((20, 6, 3))
    sd["family_head.weight"] = sd["family_head.weight"][:, :100]
    with pytest.raises(CheckpointMismatchError, match="family_head.weight"):
        cast.load_model(write_deit_file(tmp_path / "bad.pth", sd))
    four = official_hcast_sd((20, 6, 3))
    four["level4_head.weight"] = torch.zeros(2, 384)
    with pytest.raises(CheckpointMismatchError, match="level4_head"):
        cast.load_model(write_deit_file(tmp_path / "four.pth", four))
    deep = {k: v for k, v in official_hcast_sd((20, 6, 3)).items() if not k.startswith(("blocks4.", "blocks.10", "blocks.9"))}
    with pytest.raises(CastLoadError):
        cast.load_model(write_deit_file(tmp_path / "deep.pth", deep))


# -- taxonomies ----------------------------------------------------------------------------------------


def taxonomy_3() -> Taxonomy:
    return Taxonomy(("species", "family", "order"), (("a", "b", "c", "d", "e", "f"), ("F0", "F1", "F2"), ("O0", "O1")),
                    ((0, 0, 1, 1, 2, 2), (0, 0, 1)))


def test_a_taxonomy_names_the_levels_of_a_loaded_file_and_checks_their_sizes(tmp_path):
    sd = official_hcast_sd((6, 3, 2))
    path = write_deit_file(tmp_path / "h.pth", sd)
    tax_file = tmp_path / "taxonomy.json"
    taxonomy_3().save(tax_file)
    model = cast.load_model(path, taxonomy=tax_file)
    assert model.info.taxonomy == taxonomy_3() and model.info.class_names == list("abcdef")
    official = tmp_path / "tree.json"  # H-CAST's own form: the valid (fine, middle, coarse) id paths
    official.write_text(json.dumps(taxonomy_3().paths().tolist()))
    from_paths = cast.load_model(path, taxonomy=official).info.taxonomy
    assert from_paths.sizes == (6, 3, 2) and from_paths.parents == taxonomy_3().parents
    assert from_paths.classes[1] == ("family 0", "family 1", "family 2")
    wrong = Taxonomy(("class", "group"), (tuple("abcdef"), ("x", "y")), ((0, 0, 0, 1, 1, 1),))
    with pytest.raises(CastLoadError, match="3/2|6/3/2"):
        cast.load_model(path, taxonomy=wrong)
    assert cast.load_model(path).info.taxonomy is None  # none given: default names, no paths


def test_our_format_carries_the_taxonomy(tmp_path):
    model = cast.load_model(write_deit_file(tmp_path / "h.pth", official_hcast_sd((6, 3, 2))), taxonomy=taxonomy_3())
    save_own_format(model, tmp_path / "export")
    again = cast.load_model(tmp_path / "export")
    assert isinstance(again, HCAST) and again.level_classes == [6, 3, 2] and again.info.taxonomy == taxonomy_3()
    assert again.info.class_names == list("abcdef")
    x, sp = inputs()
    with torch.no_grad():
        for a, b in zip(model(x, sp), again(x, sp)):
            torch.testing.assert_close(a, b)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_args"]["level_classes"] == [6, 3, 2]
    assert config["info"]["taxonomy"]["levels"][0]["parents"] == [0, 0, 1, 1, 2, 2]


def test_a_flat_cast_file_starts_hcast_fine_tuning_with_fresh_heads(tmp_path):
    flat = random_state_dict("deit_family_cast_small")
    path = write_deit_file(tmp_path / "cast_small.pth", flat)
    model = timm.create_model("hcast_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              level_classes=(6, 3, 2))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in flat.items() if not k.startswith("head."))
    assert state["head.weight"].shape == (6, 384) and state["manufacturer_head.weight"].shape == (2, 384)


def test_taxonomy_paths_consistent_path_and_metrics():
    tax = taxonomy_3()
    assert tax.paths().tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 0], [4, 2, 1], [5, 2, 1]]
    assert tax.is_path((4, 2, 1)) and not tax.is_path((4, 1, 1)) and tax.names_of((2, 1, 0)) == ("c", "F1", "O0")
    rng = np.random.default_rng(0)
    log_probs = [np.log(rng.dirichlet(np.ones(n), size=5)) for n in tax.sizes]
    best = tax.consistent_path(log_probs)
    for b in range(5):  # brute force over every tuple, keeping the paths
        tuples = [t for t in itertools.product(*(range(n) for n in tax.sizes)) if tax.is_path(t)]
        expected = max(tuples, key=lambda t: sum(log_probs[level][b][c] for level, c in enumerate(t)))
        assert tuple(best[b]) == expected
    predicted = np.array([[0, 0, 0], [2, 1, 0], [4, 1, 1], [5, 2, 0]])
    targets = np.array([[0, 0, 0], [3, 1, 0], [4, 2, 1], [5, 2, 1]])
    m = hierarchical_metrics(predicted, targets, tax)
    assert m["top1"] == [0.75, 0.75, 0.75] and m["fpa"] == 0.25 and m["tice"] == 0.5 and m["n"] == 4


def test_taxonomy_files_that_are_not_trees_get_their_reason(tmp_path):
    assert load_taxonomy(taxonomy_3().to_dict()) == taxonomy_3()
    with pytest.raises(TaxonomyError, match="two parents"):
        Taxonomy.from_paths([[0, 0], [0, 1], [1, 1]])
    with pytest.raises(TaxonomyError, match="no child"):
        Taxonomy(("class", "group"), (("a", "b"), ("x", "y")), ((0, 0),))
    with pytest.raises(TaxonomyError, match="not a class of the next level"):
        Taxonomy(("class", "group"), (("a", "b"), ("x",)), ((0, 1),))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TaxonomyError, match="bad.json: not a JSON file"):
        load_taxonomy(bad)
    with pytest.raises(TaxonomyError, match="not found"):
        load_taxonomy(tmp_path / "missing.json")
    with pytest.raises(TaxonomyError, match="levels"):
        load_taxonomy({"classes": []})


def test_hierarchical_variants_take_2_or_3_levels():
    with pytest.raises(ValueError, match="2 or 3"):
        timm.create_model("hcast_tiny", level_classes=(10,), device="meta")
    with pytest.raises(ValueError, match="2 or 3"):
        timm.create_model("hcast_tiny", level_classes=(10, 5, 3, 2), device="meta")
    model = timm.create_model("hcast_tiny", img_size=64, level_classes=(10, 5, 3))
    model.reset_classifier((7, 4, 2))
    assert model.level_classes == [7, 4, 2] and model.manufacturer_head.out_features == 2
    model.reset_classifier(0)
    model.reset_classifier(9)  # the coarse heads come back at their sizes
    assert [h.out_features for h in model.heads] == [9, 4, 2]
    with pytest.raises(ValueError, match="heads read stages"):
        model.prune_intermediate_layers([1], prune_head=False)


# -- inference: per-level predictions in the tree and its JSON -------------------------------------------


def photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((180, 240, 3), np.uint8)
    img[:, :120] = (200, 60, 40)
    img[60:, 150:] = (30, 90, 220)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def test_a_tree_carries_each_taxonomy_level_its_consistent_path_and_each_segments_own_prediction(tmp_path):
    model = cast.load_model(write_deit_file(tmp_path / "h.pth", official_hcast_sd((6, 3, 2), seed=4)), taxonomy=taxonomy_3())
    seg = cast.load_segmenter(model, refine=False)
    tree = seg(photo())
    # the same forward pass, by hand, on what the tree says the model saw
    x = seg.normalise(tree.working_image[None])
    sp = torch.from_numpy(tree.working_superpixels.astype(np.int64))[None]
    with torch.no_grad():
        probs = [lg[0].softmax(-1).numpy() for lg in model(x, sp)]
    tax = taxonomy_3()
    assert [lv.name for lv in tree.taxonomy.levels] == ["species", "family", "order"]
    assert [lv.tree_level for lv in tree.taxonomy.levels] == [1, 2, 3]
    for lv, p, names in zip(tree.taxonomy.levels, probs, tax.classes):
        best = int(p.argmax())
        assert lv.predictions[0][0] == names[best] and abs(lv.predictions[0][1] - p[best]) < 1e-4
    argmax = [int(p.argmax()) for p in probs]
    assert tree.taxonomy.argmax_path == list(tax.names_of(argmax)) and tree.taxonomy.heads_agree == tax.is_path(argmax)
    best_path = max(tax.paths().tolist(), key=lambda path: sum(np.log(probs[t][c]) for t, c in enumerate(path)))
    assert tree.taxonomy.consistent_path == list(tax.names_of(best_path))
    for node in tree.nodes:  # levels 1..3 answer species, family, order; level 4 no head
        if node.level == 4:
            assert node.taxonomy_predictions is None
        else:
            assert node.taxonomy_predictions and node.taxonomy_predictions[0][0] in tax.classes[node.level - 1]
    assert tree.level_predictions is None and all(n.predictions is None for n in tree.nodes)  # no one-head-fits-all
    d = json.loads(tree.to_json())
    assert d["version"] == 3 and d["taxonomy"]["consistent_path"] == tree.taxonomy.consistent_path
    assert d["model"]["taxonomy"] == {"levels": ["species", "family", "order"], "classes": [6, 3, 2]}
    assert d["nodes"][0]["taxonomy_predictions"][0][0] in tax.classes[0]
    # exports name each segment by its own prediction at its level (no head at level 4: "segment")
    from cast.exports import SEGMENT_LABEL, coco_record, labelstudio_record

    record = coco_record(tree, "photo.png")
    for a in record["annotations"]:
        node = tree.node(a["node"])
        if node.level == 4:
            assert a["category"] == SEGMENT_LABEL and a["score"] is None
        else:
            assert (a["category"], a["score"]) == (node.taxonomy_predictions[0][0], round(node.taxonomy_predictions[0][1], 6))
    assert 0 < labelstudio_record(tree, "photo.png")["predictions"][0]["score"] <= 1


def test_without_a_taxonomy_levels_get_default_names_and_no_path(tmp_path):
    model = cast.load_model(write_deit_file(tmp_path / "h.pth", official_hcast_sd((12, 4))))
    tree = cast.load_segmenter(model, refine=False)(photo(1))
    assert [(lv.name, lv.tree_level) for lv in tree.taxonomy.levels] == [("class", 2), ("group", 3)]
    assert tree.taxonomy.levels[1].predictions[0][0].startswith("group ")
    assert tree.taxonomy.consistent_path is None and tree.taxonomy.heads_agree is None
    assert all((n.taxonomy_predictions is None) == (n.level in (1, 4)) for n in tree.nodes)
    flat = cast.load_segmenter(cast.load_model("bundled_flat"), refine=False)(photo(1))
    assert flat.taxonomy is None and json.loads(flat.to_json())["taxonomy"] is None


def test_the_cli_takes_a_taxonomy_and_refuses_one_that_does_not_fit(tmp_path, capsys):
    from PIL import Image

    from cast.__main__ import main

    weights = write_deit_file(tmp_path / "h.pth", official_hcast_sd((6, 3, 2)))
    taxonomy_3().save(tmp_path / "tax.json")
    Image.fromarray(photo(2)).save(tmp_path / "photo.png")
    common = [str(tmp_path / "photo.png"), "--model", str(weights), "--workers", "0", "--writers", "0", "--quiet", "--no-refine"]
    assert main(["segment", *common, "--out", str(tmp_path / "out"), "--taxonomy", str(tmp_path / "tax.json")]) == 0
    d = json.loads((tmp_path / "out" / "photo" / "hierarchy.json").read_text())
    assert [lv["name"] for lv in d["taxonomy"]["levels"]] == ["species", "family", "order"]
    assert d["taxonomy"]["consistent_path"][0] in "abcdef"
    (tmp_path / "two.json").write_text(json.dumps([[0, 0], [1, 0], [2, 1]]))
    assert main(["segment", *common, "--out", str(tmp_path / "bad"), "--taxonomy", str(tmp_path / "two.json")]) == 2
    err = capsys.readouterr().err
    assert "the taxonomy" in err and "does not fit" in err and "cannot load model" not in err
    # the Label Studio backend takes the same option and says the same
    assert main(["serve-labelstudio", "--model", str(weights), "--port", "0", "--taxonomy", str(tmp_path / "two.json")]) == 2
    err = capsys.readouterr().err
    assert "the taxonomy" in err and "does not fit" in err and "cannot load model" not in err


def test_the_label_studio_backend_takes_a_taxonomy_and_names_clicked_segments_by_their_level(tmp_path):
    import base64
    import urllib.request

    from PIL import Image

    from cast.exports import GRANULARITY
    from cast.labelstudio import FetchSettings, create_server
    from cast.labelstudio.config import labeling_config

    weights = write_deit_file(tmp_path / "h.pth", official_hcast_sd((6, 3, 2), seed=4))
    taxonomy_3().save(tmp_path / "tax.json")
    Image.fromarray(photo()).save(tmp_path / "photo.png")
    server = create_server(str(weights), port=0, basic_auth=("u", "p"), fetch=FetchSettings(local_root=tmp_path),
                           refine=False, taxonomy=str(tmp_path / "tax.json"))
    server.serve_in_thread()
    try:
        tree = server.backend.segmenter(photo())
        config = labeling_config(labels=[name for level in taxonomy_3().classes for name in level])
        for level in (1, 2, 3):  # "fine part", "sub-part", "part": the species, family and order heads
            click = {"type": "keypointlabels", "is_positive": True, "original_width": 240, "original_height": 180,
                     "value": {"x": 25.0, "y": 50.0, "keypointlabels": [GRANULARITY[level]]}}
            body = {"tasks": [{"id": 1, "data": {"image": "photo.png"}}], "label_config": config,
                    "params": {"context": {"result": [click]}}}
            req = urllib.request.Request(server.url + "/predict", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
            with urllib.request.urlopen(req, timeout=120) as r:
                (answer,) = json.loads(r.read())["results"]
            node = tree.node(level, tree.segment_at(60, 90, level))
            name, prob = node.taxonomy_predictions[0]
            assert name in taxonomy_3().classes[level - 1]
            assert answer["result"][0]["value"]["brushlabels"] == [name]
            assert answer["score"] == pytest.approx(prob, abs=1e-6)
    finally:
        server.shutdown()
        server.server_close()
