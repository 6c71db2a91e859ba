"""Label maps held compactly: the full-size maps made on request equal the ones composed the slow
way, offloading to a file frees the memory and gives the same maps back, a removed file says so."""

from __future__ import annotations

import numpy as np
import pytest

from cast.labelmaps import LabelMaps, MapsUnavailableError
from cast.refine import RefineSettings, axis_map
from tests.helpers import check_invariants


@pytest.fixture(scope="module")
def big_tree(tiny_predictor, photo):
    """A tree of a photo larger than its refinement size: detail maps smaller than the photo."""
    from PIL import Image

    img = np.asarray(Image.fromarray(photo).resize((900, 700)))
    tiny_predictor.refine = RefineSettings(max_pixels=200_000)
    try:
        return tiny_predictor(img)
    finally:
        tiny_predictor.refine = RefineSettings()


def slow_maps(maps: LabelMaps) -> tuple[list[np.ndarray], np.ndarray]:
    """The full-size maps as the tree used to hold them: level 1 enlarged, coarser levels composed."""
    level1, sp = maps.detail()
    W, H = maps.size
    rows, cols = axis_map(H, level1.shape[0]), axis_map(W, level1.shape[1])
    out = [level1[rows][:, cols]]
    for p in maps._parents:
        out.append(p[out[-1]].astype(level1.dtype))
    return out, sp[rows][:, cols]


def test_maps_are_made_from_detail_maps_smaller_than_the_photo(big_tree):
    maps = big_tree.maps
    assert maps.size == (900, 700) and maps.detail_shape[0] * maps.detail_shape[1] <= 200_000
    levels, sp = slow_maps(maps)
    for lv in range(1, 5):
        assert np.array_equal(big_tree.label_map(lv), levels[lv - 1])
        assert np.array_equal(big_tree.label_maps[lv - 1], levels[lv - 1])
    assert np.array_equal(big_tree.superpixels, sp)
    check_invariants(big_tree, 900, 700)
    rng = np.random.default_rng(0)
    for x, y in zip(rng.integers(0, 900, 50), rng.integers(0, 700, 50)):
        for lv in range(1, 5):
            assert big_tree.segment_at(int(x), int(y), lv) == levels[lv - 1][y, x]
    areas = np.bincount(sp.ravel().astype(np.int64), minlength=maps.superpixel_areas.size)
    assert np.array_equal(maps.superpixel_areas, areas)


def test_resized_maps_equal_a_nearest_resize_of_the_full_size_maps(big_tree):
    levels, sp = slow_maps(big_tree.maps)
    small, small_sp = big_tree.maps.resized((300, 233))
    rows, cols = (np.arange(233) * 700) // 233, (np.arange(300) * 900) // 300
    for lv in range(4):
        assert np.array_equal(small[lv], levels[lv][rows][:, cols])
    assert np.array_equal(small_sp, sp[rows][:, cols])


def test_offload_frees_memory_and_gives_the_same_maps_back(tiny_predictor, photo, tmp_path):
    tree = tiny_predictor(photo)
    before = [m.copy() for m in tree.label_maps]
    sp = tree.superpixels.copy()
    held = tree.maps.nbytes
    assert held >= sum(m.nbytes for m in before)  # the full-size maps were kept after first use
    tree.offload(tmp_path / "maps.npz")
    assert tree.maps.offloaded and tree.maps.nbytes == tree.maps.superpixel_areas.nbytes
    assert not list(tmp_path.glob("*.tmp"))
    for lv in range(1, 5):
        assert np.array_equal(tree.label_map(lv), before[lv - 1])
    assert np.array_equal(tree.superpixels, sp)
    assert tree.maps.nbytes == tree.maps.superpixel_areas.nbytes  # nothing kept after reading back
    assert dict(tree.maps.images()).keys() == {"level1.png", "level2.png", "level3.png", "level4.png", "superpixels.png"}
    w, h = tree.size
    assert tree.segment_at(w // 2, h // 2, 2) == before[1][h // 2, w // 2]
    (tmp_path / "maps.npz").unlink()
    with pytest.raises(MapsUnavailableError, match="gone"):
        tree.label_map(1)
    assert tree.size == (w, h) and tree.num_segments  # what does not need the maps still works


def test_offloaded_file_holds_no_pickles(tiny_predictor, photo, tmp_path):
    tree = tiny_predictor(photo)
    path = tree.offload(tmp_path / "maps.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"level1", "superpixels"} and z["level1"].dtype == np.uint8
