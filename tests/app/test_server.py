"""The launched app through gradio_client and plain HTTP: the public API, bad uploads, concurrency,
what is served and the offline notice."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from cast.hierarchy import SCHEMA_NAME, SCHEMA_VERSION
from tests.app.helpers import ABSENT_MODEL

pytestmark = pytest.mark.slow  # a launched server

OUTPUTS = ["overlay", "tree", "panel", "level_predictions", "json_file", "labels_zip", "overlay_file", "hierarchy", "status",
           "concepts"]


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


def segment(client: Client, path: Path) -> dict:
    out = client.predict(handle_file(str(path)), api_name="/segment")
    assert len(out) == len(OUTPUTS)
    return dict(zip(OUTPUTS, out))


def test_one_public_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/segment"]
    assert not api["unnamed_endpoints"]
    params = api["named_endpoints"]["/segment"]["parameters"]
    assert params[0]["parameter_name"] == "image"
    assert all(p["parameter_has_default"] for p in params[1:])  # only the image is required


def test_good_photo_gives_the_hierarchy(client, uploads):
    out = segment(client, uploads["good.jpg"])
    tree = out["hierarchy"]
    assert tree["schema"] == SCHEMA_NAME and tree["version"] == SCHEMA_VERSION
    assert tree["image"] == {"width": 192, "height": 192, "name": "good.jpg", "notes": []}
    counts = [lv["num_segments"] for lv in tree["levels"]]
    assert len(tree["nodes"]) == sum(counts) and 1 <= counts[3] <= counts[2] <= counts[1] <= counts[0] <= 64
    assert tree["model"]["source"] == "bundled" and tree["level_predictions"] is None  # H-CAST: one head per level
    assert [lv["name"] for lv in tree["taxonomy"]["levels"]] == ["class", "group"]
    assert json.loads(Path(out["json_file"]).read_text()) == tree  # the download is the same tree
    overlay = Image.open(out["overlay"])
    assert overlay.format == "PNG" and overlay.size == (512, 512)  # small photos are shown enlarged
    assert Path(out["labels_zip"]).stat().st_size > 0
    assert 'data-node="L4-0"' in out["tree"] and "level 4" in out["level_predictions"]
    assert "bundled" in out["status"]
    assert tree["concepts"] is None and "no concept hierarchy" in out["concepts"]


def test_a_model_folder_with_concepts_through_the_api(client, models_dir, uploads):
    folder = str((models_dir / "my_cast").resolve())
    out = dict(zip(OUTPUTS, client.predict(handle_file(str(uploads["good.jpg"])), folder, api_name="/segment")))
    tree = out["hierarchy"]
    assert [c["level"] for c in tree["concepts"]] == [1, 2, 3] and len(tree["nodes"][0]["concepts"]) == 3
    assert out["concepts"].count('class="concept-step"') == 3


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "not an image file"),
    ("empty.png", "not an image file"),
    ("truncated.jpg", "cannot"),
    ("bomb.png", "too large"),
    ("tiny.png", "too small"),
])
def test_bad_uploads_get_a_clear_error_and_the_server_keeps_serving(client, uploads, name, message):
    with pytest.raises(Exception) as err:
        segment(client, uploads[name])
    text = str(err.value)
    assert message in text and name in text, text
    assert "Traceback" not in text
    assert segment(client, uploads["good.jpg"])["hierarchy"]["schema"] == SCHEMA_NAME


@pytest.mark.parametrize("name, note", [
    ("cmyk.jpg", "CMYK image converted"),
    ("deep16.png", "I;16 image converted"),
    ("animated.gif", "first frame is used"),
])
def test_odd_but_readable_uploads_are_segmented_and_the_conversion_is_reported(client, uploads, name, note):
    out = segment(client, uploads[name])
    assert any(note in n for n in out["hierarchy"]["image"]["notes"])
    assert note in out["status"]


def test_files_above_the_size_limit_are_refused(app_server, client, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, 6 * 2**20, dtype=np.uint8).tobytes())
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        segment(client, big)  # the client refuses before uploading
    r = httpx.post(f"{app_server[0]}gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=30)
    assert r.status_code == 413  # and so does the server, for clients that don't check


def test_eight_concurrent_clients_are_all_answered(app_server, photo, tmp_path):
    url, _ = app_server
    paths = []
    for i in range(8):  # eight different photos: no result-cache hits
        p = tmp_path / f"crop{i}.jpg"
        Image.fromarray(photo[i * 20: i * 20 + 300, i * 15: i * 15 + 320]).save(p, quality=90)
        paths.append(p)

    def one(p: Path) -> dict:
        return segment(Client(url, verbose=False), p)["hierarchy"]

    with ThreadPoolExecutor(8) as pool:
        trees = list(pool.map(one, paths))
    assert [t["image"]["name"] for t in trees] == [p.name for p in paths]
    assert all(t["schema"] == SCHEMA_NAME and t["nodes"] for t in trees)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_only_assets_and_gradio_cache_are_served(app_server, client, uploads):
    url, explorer = app_server
    repo = Path(__file__).resolve().parents[2]
    out = segment(client, uploads["good.jpg"])
    assert _status(f"{url}gradio_api/file={out['json_file']}") == 200  # outputs live in Gradio's cache
    assert _status(f"{url}gradio_api/file={repo / 'assets' / 'examples' / 'chelsea.jpg'}") == 200
    for path in [repo / "README.md", repo / "app.py", repo / "cast" / "hub.py", Path("/etc/passwd"),
                 repo / "assets" / ".." / "README.md", next(explorer.root.rglob("hierarchy.json")),
                 repo / "assets" / "bundled" / ".." / ".." / "requirements.txt"]:
        assert _status(f"{url}gradio_api/file={path}") in (403, 404), path


def test_the_page_says_it_fell_back_to_the_bundled_model(app_server):
    url, explorer = app_server
    assert explorer.default == "bundled" and ABSENT_MODEL in (explorer.notice or "")
    with urllib.request.urlopen(f"{url}config", timeout=10) as r:
        config = json.loads(r.read())
    notice = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "notice"][0]["props"]
    assert notice["visible"] and "Offline mode" in notice["value"] and "bundled" in notice["value"]
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"input-image", "segment-button", "overlay", "level", "tree", "segment-panel", "level-predictions",
            "download-json"} <= ids


def test_a_full_queue_answers_busy(tmp_path, models_dir, uploads):
    """A bounded queue refuses instead of piling up (the browser then shows Gradio's "This
    application is currently busy" message); a queue of size 0 makes that deterministic."""
    from app import create_app, launch_kwargs
    from tests.app.helpers import app_config, free_port

    cfg = app_config(tmp_path, models_dir, queue_size=0)
    demo, explorer = create_app(cfg)
    kwargs = launch_kwargs(cfg)
    kwargs.update(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    demo.launch(**kwargs)
    try:
        client = Client(f"http://127.0.0.1:{kwargs['server_port']}/", verbose=False)
        with pytest.raises(Exception, match="(?i)queue is full"):
            client.predict(handle_file(str(uploads["good.jpg"])), api_name="/segment")
    finally:
        demo.close()
        explorer.close()


def test_python_app_py_serves_at_once_with_an_unreachable_hub(tmp_path):
    """`python app.py` on a machine whose Hub does not answer (no HF_HUB_OFFLINE, the endpoint a
    closed loopback port, nothing cached): the page is served with the bundled model, the notice
    says why, and huggingface_hub's retry ladder never runs."""
    import os
    import subprocess
    import sys
    import time

    from tests.app.helpers import free_port

    root = Path(__file__).resolve().parents[2]
    port, closed = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed}", HF_HUB_CACHE=str(tmp_path / "empty-cache"),
               GRADIO_SERVER_PORT=str(port), CAST_APP_PRECOMPUTE_EXAMPLES="0", CAST_APP_TEMP_DIR=str(tmp_path / "tmp"),
               CAST_APP_AUTOSAVE_DIR=str(tmp_path / "autosave"),
               CAST_HUB_TIMEOUT="2")
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, config = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert config is not None, (tmp_path / "app.log").read_text()[-3000:]
        notice = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "notice"][0]["props"]
        assert "Offline mode" in notice["value"] and "could not be reached" in notice["value"]
        model = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "model"][0]["props"]
        assert model["value"] == "bundled"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "Retrying in" not in (tmp_path / "app.log").read_text()
