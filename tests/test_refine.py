"""Label maps at the photo's own resolution: boundaries that follow the photo, exact nesting, the
tree's numbers consistent with the refined maps, the unrefined maps unchanged, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import cast
from cast.hierarchy import boundaries
from cast.refine import RefineSettings, axis_map, refine_labels, refinement_size
from tests.helpers import check_invariants

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def disc_scene(size: int, work: int, radius: float = 0.31, centre=(0.52, 0.47)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A disc on a background, drawn exactly at ``size`` and as the model would see it at ``work``:
    ``(photo, true labels, working image, working labels)``."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    truth = (np.hypot(xx / size - centre[0], yy / size - centre[1]) < radius).astype(np.int64)
    rng = np.random.default_rng(0)
    photo = np.where(truth[..., None], np.array([200, 60, 40]), np.array([40, 90, 170])).astype(np.float64)
    photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)  # a little sensor noise
    working = np.asarray(Image.fromarray(photo).resize((work, work), Image.Resampling.BILINEAR))
    wy, wx = np.mgrid[0:work, 0:work] + 0.5
    labels = (np.hypot(wx / work - centre[0], wy / work - centre[1]) < radius).astype(np.int64)
    return photo, truth, working, labels


def edge_distances(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each boundary pixel of ``labels`` to the true edge."""
    return ndimage.distance_transform_edt(~boundaries(truth))[boundaries(labels)]


def test_refined_boundaries_follow_a_known_edge_where_nearest_ones_do_not():
    photo, truth, working, labels = disc_scene(640, 40)  # 16 photo pixels per working pixel
    nearest = labels[axis_map(640, 40)][:, axis_map(640, 40)]
    refined = refine_labels(photo, labels, working)
    d_near, d_ref = edge_distances(nearest, truth), edge_distances(refined, truth)
    assert np.mean(d_near > 2) > 0.5  # stair steps: most of the nearest boundary is off the edge
    assert np.quantile(d_ref, 0.99) <= 2.0 and d_ref.max() <= 3.0  # the refined one lies on it
    assert (refined == truth).mean() > 0.999
    assert np.array_equal(refine_labels(photo, labels, working, RefineSettings(enabled=False)), nearest)


def test_refinement_only_moves_pixels_near_boundaries_and_only_to_neighbouring_segments():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.repeat(rng.integers(0, 5, (12, 12)), 4, 0), 4, 1)  # 48 x 48 working map
    working = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(working).resize((300, 240), Image.Resampling.NEAREST))
    out = refine_labels(photo, labels, working)
    near = labels[axis_map(240, 48)][:, axis_map(300, 48)]
    moved = out != near
    band = cast.refine.band_of(labels, 2)[axis_map(240, 48)][:, axis_map(300, 48)]
    assert not (moved & ~band).any()
    # every new label is one present within the window around the pixel's working pixel
    ys, xs = np.nonzero(moved)
    for y, x in zip(ys[:500], xs[:500]):
        wy, wx = axis_map(240, 48)[y], axis_map(300, 48)[x]
        assert out[y, x] in labels[max(wy - 3, 0):wy + 4, max(wx - 3, 0):wx + 4]


@pytest.fixture(scope="module")
def bundled():
    return cast.Predictor("bundled_flat"), cast.Predictor("bundled_flat", refine=False)


def test_refined_trees_nest_and_agree_with_their_maps(bundled, photo):
    refined, _ = bundled
    big = np.asarray(Image.fromarray(photo).resize((900, 700), Image.Resampling.BICUBIC))
    tree = refined(big)
    check_invariants(tree, 900, 700)  # compact ids, areas and boxes from the maps, exact nesting
    assert np.array_equal(tree.superpixel_to_level1[tree.superpixels.astype(np.int64)], tree.label_maps[0])
    assert "refine" in tree.timings
    d = json.loads(tree.to_json())
    assert [n["area"] for n in d["nodes"]] == [n.area for n in tree.nodes]
    assert sum(n["area"] for n in d["nodes"] if n["level"] == 2) == 900 * 700
    # the refinement changed pixels (the photo is larger than the working size) but not the tree
    assert any((a != b).any() for a, b in zip(tree.label_maps, tree.nearest_label_maps()))
    assert tree.num_segments[3] == len(tree.nodes_at(4)) and tree.parents[0].shape[0] == tree.num_segments[0]


def test_refinement_is_skipped_where_the_photo_is_not_larger(bundled, photo):
    refined, plain = bundled
    small = np.asarray(Image.fromarray(photo).resize((150, 120)))
    a, b = refined(small), plain(small)
    assert all(np.array_equal(x, y) for x, y in zip(a.label_maps, b.label_maps)) and "refine" not in a.timings


def _close(a, b, tol: float = 2e-6) -> bool:
    """JSON values equal, floats within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return a == b


def test_refine_false_gives_the_maps_of_earlier_versions(bundled):
    """The bundled model on an example photo without refinement: exactly the stored output of the
    version before refinement existed (maps, nodes, parents, predictions)."""
    _, plain = bundled
    tree = plain(ROOT / "assets" / "examples" / "chelsea.jpg")
    stored = np.load(DATA / "bundled_chelsea_nearest_maps.npz")
    assert all(np.array_equal(tree.label_maps[i], stored[f"arr_{i}"]) for i in range(4))
    assert np.array_equal(tree.superpixels, stored["sp"])
    expected = json.loads((DATA / "bundled_chelsea_nearest_tree.json").read_text())
    got = json.loads(tree.to_json())
    assert got["taxonomy"] is None and all(n.pop("taxonomy_predictions") is None for n in got["nodes"])  # newer than the file
    for key in ("image", "levels", "parents", "superpixels"):
        assert got[key] == expected[key], key
    # probabilities are stored rounded to 6 decimals: a last-digit flip from the thread schedule is allowed
    for key in ("nodes", "level_predictions"):
        assert _close(got[key], expected[key]), key
    # the refined tree without its refinement: the same segments (ids follow the refined areas)
    refined_tree = bundled[0](ROOT / "assets" / "examples" / "chelsea.jpg")
    for a, b in zip(refined_tree.nearest_label_maps(), tree.label_maps):
        pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]  # a one-to-one relabelling


def test_refinement_size_is_capped():
    assert refinement_size((1024, 768), 6_000_000) == (1024, 768)
    w, h = refinement_size((6000, 4000), 6_000_000)
    assert w * h <= 6_000_000 and abs(w / h - 1.5) < 0.01


HUGE_SCRIPT = r"""
import json, resource, sys
import numpy as np, torch
import cast
from tests.helpers import make_tiny_model
torch.set_num_threads(2)
model = make_tiny_model()
predictor = cast.Predictor(model)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tree = predictor(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": list(tree.size), "before_gib": before / 2**20, "peak_gib": peak / 2**20,
                  "refined": "refine" in tree.timings}))
"""


@pytest.mark.slow  # a subprocess with a 48-megapixel JPEG
def test_memory_stays_bounded_on_a_huge_photo(tmp_path, photo):
    path = tmp_path / "huge.jpg"
    Image.fromarray(photo).resize((8000, 6000), Image.Resampling.BILINEAR).save(path, quality=85)
    r = subprocess.run([sys.executable, "-c", HUGE_SCRIPT, str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["size"] == [8000, 6000] and out["refined"]
    # refined at the 6 MP cap: the growth is the 48 MP label maps (4 x 48 MB uint8 + 96 MB uint16
    # superpixels) plus bounded working arrays, not a full-resolution float copy of the photo
    assert out["peak_gib"] - out["before_gib"] < 1.2, out
