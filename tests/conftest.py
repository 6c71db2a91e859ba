"""Test setup: the whole suite runs offline against a private Hub cache, on small models/images."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub or gradio (they read these at import time).
_HUB_CACHE = tempfile.mkdtemp(prefix="cast-test-hub-")
# It holds full-size published-layout files (GBs): gone with the run, whatever its outcome.
atexit.register(shutil.rmtree, _HUB_CACHE, ignore_errors=True)
# Gradio's file cache (the launched app's outputs, gradio_client's downloads): private to the run too,
# instead of piling up in the machine's /tmp/gradio.
_GRADIO_TMP = tempfile.mkdtemp(prefix="cast-test-gradio-")
atexit.register(shutil.rmtree, _GRADIO_TMP, ignore_errors=True)
os.environ["GRADIO_TEMP_DIR"] = _GRADIO_TMP
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = _HUB_CACHE
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    return Path(_HUB_CACHE)


@pytest.fixture(scope="session")
def tiny_model():
    """A small randomly initialised CAST with a 5-class head, carrying test metadata."""
    from tests.helpers import make_tiny_model

    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    from cast.loading import save_own_format

    return save_own_format(tiny_model, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model):
    import cast

    return cast.Predictor(tiny_model)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's public-domain astronaut), 512x512 RGB uint8."""
    from skimage import data

    return data.astronaut()
