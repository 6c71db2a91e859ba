import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.data.partshapes import (
    CLASSES,
    PART_CLASS,
    PARTS,
    SPLIT_SEEDS,
    PartShapes,
    Sample,
    export,
    label_of,
    labels,
    object_parts,
    render,
)

REPO = Path(__file__).resolve().parents[2]


def _digest(s: Sample) -> str:
    h = hashlib.sha256()
    for a in (s.image, s.object_mask, s.part_mask):
        h.update(a.tobytes())
    h.update(str(s.label).encode())
    return h.hexdigest()


def _same(a: Sample, b: Sample) -> bool:
    return (a.label == b.label and np.array_equal(a.image, b.image) and np.array_equal(a.object_mask, b.object_mask)
            and np.array_equal(a.part_mask, b.part_mask))


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [render(i, "train", image_size=96) for i in range(40)]


# --- vocabulary ----------------------------------------------------------------------------------------------------


def test_vocabulary():
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert PARTS[0] == "background" and PART_CLASS[0] == -1
    assert len(PARTS) == len(PART_CLASS) == len(set(PARTS)) and len(PARTS) < 256
    for k in range(1, len(PARTS)):
        cls, role = PARTS[k].split("/")
        assert CLASSES[PART_CLASS[k]] == cls and role
    roles_per_class = Counter(PART_CLASS[1:])
    assert all(roles_per_class[c] >= 2 for c in range(len(CLASSES)))


def test_object_definitions_have_3_to_6_parts_of_their_own_class():
    for label, name in enumerate(CLASSES):
        own_roles = {p.split("/")[1] for p, c in zip(PARTS, PART_CLASS) if c == label}
        for i in range(25):
            parts = object_parts(label, np.random.default_rng([label, i]))
            assert 3 <= len(parts) <= 6, (name, len(parts))
            used = {p.role for p in parts}
            assert used <= own_roles and len(used) >= 2, (name, used)


# --- determinism ---------------------------------------------------------------------------------------------------


def test_deterministic_in_any_order():
    idx = [0, 7, 3, 12]
    forward = [render(i, "val", image_size=64) for i in idx]
    render(99, "train", image_size=80)  # unrelated work in between must not disturb anything
    backward = [render(i, "val", image_size=64) for i in reversed(idx)][::-1]
    assert all(_same(a, b) for a, b in zip(forward, backward))
    ds = PartShapes("val", size=20, image_size=64)
    assert _same(ds.sample(7), forward[1])


def test_deterministic_across_processes():
    idx = [0, 5, 11]
    code = ("import sys, hashlib; sys.path.insert(0, sys.argv[1])\n"
            "from train.data.partshapes import render\n"
            "for i in (11, 0, 5):\n"
            "    s = render(i, 'test', seed=123, image_size=64); h = hashlib.sha256()\n"
            "    [h.update(a.tobytes()) for a in (s.image, s.object_mask, s.part_mask)]; h.update(str(s.label).encode())\n"
            "    print(i, h.hexdigest())\n")
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True, timeout=120)
    theirs = dict(line.split() for line in out.stdout.strip().splitlines())
    assert {str(i): _digest(render(i, "test", seed=123, image_size=64)) for i in idx} == theirs


def test_splits_seeds_and_indices_differ():
    assert len(set(SPLIT_SEEDS.values())) == len(SPLIT_SEEDS) == 3
    base = render(0, "train", image_size=64)
    others = [render(1, "train", image_size=64), render(0, "val", image_size=64), render(0, "test", image_size=64),
              render(0, "train", seed=SPLIT_SEEDS["train"] + 1, image_size=64),
              # the same explicit seed must still give different splits
              render(0, "val", seed=SPLIT_SEEDS["train"], image_size=64)]
    assert all(not np.array_equal(base.image, o.image) for o in others)
    digests = {_digest(render(i, split, image_size=64)) for split in ("train", "val", "test") for i in range(10)}
    assert len(digests) == 30


def test_scene_is_resolution_independent():
    for i in range(4):
        small, big = render(i, image_size=64), render(i, image_size=128)
        assert small.label == big.label
        down = big.object_mask.reshape(64, 2, 64, 2).mean(axis=(1, 3)) >= 0.5
        inter, union = (down & (small.object_mask > 0)).sum(), (down | (small.object_mask > 0)).sum()
        assert inter / union > 0.85


def test_bad_arguments():
    with pytest.raises(ValueError):
        render(0, "training")
    with pytest.raises(ValueError):
        render(0, seed=-1)
    with pytest.raises(IndexError):
        render(-1)


# --- masks and labels ----------------------------------------------------------------------------------------------


def test_sample_types(samples):
    for s in samples:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert s.object_mask.shape == s.part_mask.shape == (96, 96)
        assert s.object_mask.dtype == s.part_mask.dtype == np.uint8
        assert isinstance(s.label, int) and 0 <= s.label < len(CLASSES)


def test_masks_consistent_with_label(samples):
    for s in samples:
        assert np.array_equal(s.object_mask, (s.part_mask > 0).astype(np.uint8))
        ids = np.unique(s.part_mask)
        assert ids[0] == 0  # background / clutter always present
        assert all(PART_CLASS[k] == s.label for k in ids[1:]), (s.label, ids)
    two_parts = np.mean([np.count_nonzero(np.unique(s.part_mask)) >= 2 for s in samples])
    assert two_parts >= 0.95


def test_object_covers_a_reasonable_fraction(samples):
    pixel, box = [], []
    for s in samples:
        ys, xs = np.nonzero(s.object_mask)
        pixel.append(s.object_mask.mean())
        box.append((np.ptp(ys) + 1) * (np.ptp(xs) + 1) / s.object_mask.size)
    assert min(pixel) > 0.03 and max(pixel) < 0.75
    assert 0.25 <= np.median(box) <= 0.6 and max(box) <= 1.0


def test_background_is_textured_and_not_object(samples):
    # the non-object area varies (texture, clutter, noise) instead of being a flat fill
    stds = [s.image[s.object_mask == 0].std(axis=0).mean() for s in samples]
    assert np.median(stds) > 5


def test_labels_balanced_and_cheap():
    lab = labels(500, "train")
    counts = Counter(lab)
    assert set(counts) == set(range(len(CLASSES))) and max(counts.values()) - min(counts.values()) <= 1
    assert labels(37, "train") == lab[:37]
    assert [label_of(i, "train") for i in range(50)] == lab[:50]
    assert labels(50, "val") != lab[:50]
    assert lab[: len(CLASSES)] != list(range(len(CLASSES)))  # shuffled, not a fixed cycle


# --- dataset -------------------------------------------------------------------------------------------------------


def test_dataset_items():
    ds = PartShapes("val", size=25, image_size=64)
    assert len(ds) == 25 and ds.classes == list(CLASSES) and len(ds.targets) == 25
    assert ds.targets == [render(i, "val", image_size=64).label for i in range(25)]
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    assert label == ds.targets[3]
    assert np.array_equal(np.asarray(img), render(3, "val", image_size=64).image)
    assert np.array_equal(np.asarray(ds[-1][0]), np.asarray(ds[24][0]))
    with pytest.raises(IndexError):
        ds[25]


def test_dataset_transform_and_masks():
    def to_tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255

    ds = PartShapes("test", size=8, image_size=64, transform=to_tensor, return_masks=True)
    x, label, obj, part = ds[2]
    ref = render(2, "test", image_size=64)
    assert isinstance(x, torch.Tensor) and x.shape == (3, 64, 64)
    assert label == ref.label
    assert isinstance(obj, np.ndarray) and np.array_equal(obj, ref.object_mask) and np.array_equal(part, ref.part_mask)
    xb, yb, ob, pb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 64, 64) and yb.tolist() == ds.targets[:4] and ob.shape == pb.shape == (4, 64, 64)


# --- export --------------------------------------------------------------------------------------------------------


def test_export_layout_and_roundtrip(tmp_path):
    out = export(tmp_path / "ps", split="test", n=12, image_size=64, progress=False)
    assert out == tmp_path / "ps"
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"dataset": "partshapes", "split": "test", "seed": SPLIT_SEEDS["test"], "image_size": 64, "n": 12,
                    "classes": list(CLASSES), "parts": list(PARTS), "part_class": list(PART_CLASS)}
    assert len(list((out / "images").rglob("*.png"))) == 12
    for i in range(12):
        s = render(i, "test", image_size=64)
        rel = Path(CLASSES[s.label]) / f"test_{i:06d}.png"
        image = Image.open(out / "images" / rel)
        part = Image.open(out / "part_masks" / rel)
        obj = Image.open(out / "object_masks" / rel)
        assert image.mode == "RGB" and part.mode == "L" and obj.mode == "L"
        assert np.array_equal(np.asarray(image), s.image)
        assert np.array_equal(np.asarray(part), s.part_mask)
        assert np.array_equal(np.asarray(obj), s.object_mask)
