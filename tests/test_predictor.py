"""The Predictor end to end on a tiny model: hierarchy invariants, export, odd inputs."""

import json

import numpy as np
import pytest
from PIL import Image

import cast
from cast.hierarchy import SCHEMA_NAME, SCHEMA_VERSION
from cast.keys import Level, SegmentKey
from tests.helpers import bomb_png, check_invariants


def test_hierarchy_invariants_on_a_photo(tiny_predictor, photo):
    tree = tiny_predictor(photo[:, :400])  # 400 x 512, not square: resized without crop
    check_invariants(tree, 400, 512)
    assert tree.num_segments[0] <= 16 and tree.num_segments[3] <= 2
    assert len(tree.level_predictions) == 4 and len(tree.level_predictions[0]) == 5
    assert abs(sum(p for _, p in tree.level_predictions[0]) - 1.0) < 1e-4  # 5 classes: top-5 is all
    assert all(n.predictions is not None and len(n.predictions) == 5 for n in tree.nodes)
    assert {"read", "superpixels", "forward", "readout", "total"} <= set(tree.timings)


def test_ids_are_ordered_top_down(tiny_predictor, photo):
    tree = tiny_predictor(photo)
    top = tree.nodes_at(4)
    assert [n.area for n in top] == sorted((n.area for n in top), reverse=True)
    for lv in range(3):
        assert list(tree.parents[lv]) == sorted(tree.parents[lv]), "children grouped by parent order"


def test_segment_lookup_and_path(tiny_predictor, photo):
    tree = tiny_predictor(photo)
    x, y = 100, 300
    fine = tree.segment_at(x, y, 1)
    path = tree.path_to_root(1, fine)
    assert [n.level for n in path] == [1, 2, 3, 4]
    assert [n.id for n in path] == [tree.segment_at(x, y, lv) for lv in range(1, 5)]
    with pytest.raises(IndexError):
        tree.segment_at(512, 0, 1)


def test_hierarchy_follows_the_model_readout(tiny_predictor, photo):
    """Label maps equal the model's own CastOutput segments, relabelled (before the boundary
    refinement, which only moves pixels near boundaries: see tests/test_refine.py)."""
    import torch

    tree = tiny_predictor(photo)  # 512 x 512 -> 64 x 64 working size
    work = tree.working_image
    x = tiny_predictor.normalise(work[None])
    sp = torch.from_numpy(tree.working_superpixels.astype(np.int64))[None]
    with torch.no_grad():
        out = tiny_predictor.model.forward_hierarchy(x, sp)
    for lv in range(4):
        seg = out.segments[lv][0].numpy()
        small = tree.nearest_label_maps()[lv][::8, ::8]  # nearest mapping: original pixel 8i -> working i
        pairs = set(zip(seg.ravel().tolist(), small.ravel().tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}), "a bijection of ids"


def test_json_schema_and_save(tiny_predictor, photo, tmp_path):
    tree = tiny_predictor(photo)
    d = json.loads(tree.to_json())
    assert d["schema"] == SCHEMA_NAME and d["version"] == SCHEMA_VERSION
    assert d["image"] == {"width": 512, "height": 512, "name": "", "notes": []}
    assert [lv["num_segments"] for lv in d["levels"]] == tree.num_segments
    assert len(d["nodes"]) == sum(tree.num_segments)
    assert d["nodes"][0]["key"] == "L1-0" and "class_names" not in d["model"]
    assert len(d["superpixels"]["to_level1"]) == d["superpixels"]["count"]
    out = tree.save(tmp_path / "tree")
    assert json.loads((out / "hierarchy.json").read_text())["nodes"] == d["nodes"]
    for lv in range(1, 5):
        assert np.array_equal(np.asarray(Image.open(out / f"level{lv}.png")), tree.label_maps[lv - 1])
    assert np.array_equal(np.asarray(Image.open(out / "superpixels.png")).astype(np.int64), tree.superpixels.astype(np.int64))


def test_predict_segments_batched_and_cached(tiny_predictor, photo, monkeypatch):
    tree = tiny_predictor(photo)
    keys = [n.key for n in tree.nodes_at(4)] + ["L3-0", (3, 1)]
    calls = []
    classify = tiny_predictor.classify_embed
    monkeypatch.setattr(tiny_predictor, "classify_embed", lambda images: calls.append(len(images)) or classify(images))
    got = tiny_predictor.predict_segments(tree, keys, batch_size=2)
    wanted = {n.key for n in tree.nodes_at(4)} | {SegmentKey.parse("L3-0"), SegmentKey(Level.L3, 1)}
    assert set(got) == wanted and set(tree.segment_predictions) == wanted
    assert calls == [2] * (len(wanted) // 2) + [1] * (len(wanted) % 2)  # batches of 2
    # every batched answer is what the segment gets when recognised alone (up to the published
    # padding effect of batching images with different superpixel counts)
    alone = tiny_predictor(photo)
    for key, preds in got.items():
        single = dict(tiny_predictor.predict_segments(alone, [key], batch_size=1)[key])
        assert len(preds) == 5 and all(abs(p - single[lbl]) < 0.02 for lbl, p in preds if lbl in single)
    calls.clear()
    again = tiny_predictor.predict_segments(tree, ["L3-0", "L3-1"])
    assert calls == [] and again[SegmentKey(Level.L3, 0)] is got[SegmentKey(Level.L3, 0)]  # cached, no forward pass
    with pytest.raises(KeyError):
        tiny_predictor.predict_segments(tree, ["L4-99"])


def test_masked_recognition_sees_only_the_segment(tiny_predictor, photo):
    """predict_segments == the classifier on the image greyed (0.5) outside the segment."""
    import torch

    tree = tiny_predictor(photo)
    node = tree.nodes_at(3)[0]
    got = tiny_predictor.predict_segments(tree, [node.key])[node.key]
    inside = (tree.nearest_label_maps()[2][::8, ::8] == node.id)[..., None]  # working resolution (64 px)
    masked = np.where(inside, tree.working_image, np.uint8(128)).astype(np.uint8)
    sp = torch.from_numpy(tiny_predictor.compute_superpixels(masked))[None]
    with torch.no_grad():
        probs = tiny_predictor.model(tiny_predictor.normalise(masked[None]), sp).softmax(-1)[0]
    best = int(probs.argmax())
    assert got[0][0] == tree.model["class_names"][best]
    assert abs(got[0][1] - float(probs[best])) < 1e-5


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "RGBA", "P", "L"])
def test_odd_modes_end_to_end(tiny_predictor, photo, mode, tmp_path):
    img = Image.fromarray(photo[:200, :300])
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    else:
        img = img.convert(mode)
    p = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(p)
    check_invariants(tiny_predictor(p), 300, 200)


def test_exif_rotated_photo_maps_at_corrected_size(tiny_predictor, photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    p = tmp_path / "rot.jpg"
    Image.fromarray(photo[:100, :240]).save(p, exif=exif.tobytes())
    check_invariants(tiny_predictor(p), 100, 240)


def test_tiny_image(tiny_predictor):
    img = np.random.default_rng(0).integers(0, 255, (5, 3, 3), dtype=np.uint8)  # 3 x 5 px
    tree = tiny_predictor(img)
    check_invariants(tree, 3, 5)


def test_large_photo_is_reduced_before_decoding(tiny_predictor, photo, tmp_path):
    p = tmp_path / "big.jpg"
    Image.fromarray(photo).resize((6000, 4000)).save(p, quality=80)
    src = tiny_predictor.load(p)  # decoded at the refinement size (6 MP cap): JPEG draft at half size
    assert src.size == (6000, 4000) and src.rgb.shape[:2] == (2000, 3000)
    plain = cast.Predictor(tiny_predictor.model, refine=False).load(p)  # only the model's size is needed
    assert plain.size == (6000, 4000) and max(plain.rgb.shape[:2]) < 1000
    tree = tiny_predictor(p)
    assert tree.label_maps[0].shape == (4000, 6000) and tree.label_maps[0].dtype == np.uint8


@pytest.mark.parametrize("payload,match", [(b"GIF89a broken", "not an image"), (bomb_png(), "too large")])
def test_hostile_files_give_clear_errors(tiny_predictor, tmp_path, payload, match):
    p = tmp_path / "bad.png"
    p.write_bytes(payload)
    with pytest.raises(cast.ImageReadError, match=match):
        tiny_predictor(p)


def test_one_segmenter_interface_for_cast_and_the_vit_baseline(photo):
    from cast.baselines import ViTKMeansSegmenter

    cast_seg, vit_seg = cast.load_segmenter("bundled"), cast.load_segmenter("bundled_vit")
    assert isinstance(cast_seg, cast.Predictor) and isinstance(vit_seg, ViTKMeansSegmenter)
    for seg in (cast_seg, vit_seg):
        assert isinstance(seg, cast.Segmenter) and seg.has_head
        tree = seg(photo)
        check_invariants(tree, 512, 512)
        assert tree.model["name"] == seg.info.name and {"read", "readout", "total"} <= set(tree.timings)
        probs, feats = seg.classify_embed(tree.masked_images(4, [0, 1]))
        assert probs.shape == (2, len(seg.info.class_names)) and feats.shape[0] == 2
        key = tree.nodes_at(4)[0].key
        assert seg.predict_segments(tree, [key])[key][0][0] in seg.info.class_names
    with pytest.raises(cast.CastLoadError, match="not a CAST model") as e:
        cast.Predictor("bundled_vit")
    assert e.value.short == "not a CAST model"


def test_cast_exposes_per_segment_logits_and_features(tiny_model):
    import torch

    sp = torch.arange(64 * 64).reshape(1, 64, 64) // 64 // 8 * 8 + torch.arange(64)[None, None, :] // 8
    with torch.no_grad():
        out = tiny_model.forward_hierarchy(torch.randn(1, 3, 64, 64), sp)
        for tokens, feats, logits in zip(out.segment_tokens, out.segment_features, out.segment_logits):
            assert torch.allclose(feats, tiny_model.norm(tokens)) and torch.allclose(logits, tiny_model.head(feats))


def test_errors_carry_a_short_summary():
    assert cast.CastError("long story").short == "something went wrong"
    assert cast.ImageReadError("x").short == "not an image we can read"
    assert cast.WeightsNotAvailableError("x", short="offline").short == "offline" and str(cast.WeightsNotAvailableError("x")) == "x"
    with pytest.raises(cast.WeightsNotAvailableError) as e:
        cast.load_model("cast_base.mocov3_in1k")  # offline, not cached
    assert e.value.short == "not in the local Hub cache and HF_HUB_OFFLINE is set"
