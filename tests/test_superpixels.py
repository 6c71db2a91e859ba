import numpy as np
import pytest
from PIL import Image

import cast
from cast.superpixels import SEEDS_DEIT, SEEDS_MOCO, SuperpixelSettings


@pytest.fixture(scope="module")
def image224(photo):
    return np.asarray(Image.fromarray(photo).resize((224, 224)))


@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_labels_are_compact_int64(image224, method):
    labels = cast.superpixels(image224, method=method, n_segments=196)
    assert labels.dtype == np.int64 and labels.shape == (224, 224)
    ids = np.unique(labels)
    assert ids[0] == 0 and ids[-1] == len(ids) - 1
    assert 98 <= len(ids) <= 260  # about the requested count


def test_published_settings():
    assert SEEDS_MOCO.params == {"histogram_bins": 15, "num_iterations": 20}
    assert SEEDS_DEIT.params == {"histogram_bins": 5, "num_iterations": 15}
    assert SEEDS_MOCO.method == SEEDS_DEIT.method == "seeds" and SEEDS_DEIT.n_segments == 196


def test_settings_change_the_result(image224):
    a = SEEDS_MOCO(image224)
    b = SEEDS_DEIT(image224)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_slic_retries_with_higher_compactness_on_flat_images():
    flat = np.full((96, 96, 3), 128, np.uint8)
    labels = cast.superpixels(flat, "slic", n_segments=36)
    assert labels.max() + 1 >= 18


def test_settings_round_trip():
    s = SuperpixelSettings("slic", 100, {"compactness": 20.0})
    assert SuperpixelSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)])
def test_bad_arrays_are_refused(bad):
    with pytest.raises(ValueError):
        cast.superpixels(bad)


def test_unknown_method_and_params(image224):
    with pytest.raises(ValueError, match="unknown superpixel method"):
        cast.superpixels(image224, method="watershed")
    with pytest.raises(TypeError, match="unknown SEEDS parameters"):
        cast.superpixels(image224, method="seeds", iterations=3)
