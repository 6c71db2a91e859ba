"""The backend against a live Label Studio 1.23.2 (its own virtualenv, 127.0.0.1): *Connect model*
validates and saves, pre-annotations are stored with every region and relation, a click and a box
are answered through Label Studio's interactive route, a config the backend cannot serve is refused
with its message, images come from Label Studio with both kinds of token, and basic auth is enforced."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cast.exports import GRANULARITY, ls_rle_decode
from cast.labelstudio import FetchSettings, create_server
from cast.labelstudio.config import labeling_config
from tests.app.helpers import free_port
from tests.labelstudio_server import Api, ls_python, missing_message, start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"
PHOTOS = ("chelsea.jpg", "partshapes_car_0001.png")
AUTH = ("cast", "backend-pass")

# Label Studio's own check of a prediction against a labeling config, run by its Python
VALIDATE = r"""
import json, sys
from label_studio_sdk.label_interface import LabelInterface
req = json.load(sys.stdin)
li = LabelInterface(req["config"])
print(json.dumps([str(e) for p in req["predictions"] for e in (li.validate_prediction({"result": p}, return_errors=True) or [])]))
"""


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    python = ls_python()
    assert (python.parent / "label-studio").exists(), missing_message(python)
    work = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    proc = start_server(python, work / "data", port, token, work / "server.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=240)
        yield Api(f"http://127.0.0.1:{port}", token)
    except Exception:
        print((work / "server.log").read_text()[-5000:], file=sys.stderr)
        raise
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def backend(label_studio):
    fetch = FetchSettings(label_studio_url=label_studio.base, api_key=label_studio.token)
    server = create_server("bundled", port=0, basic_auth=AUTH, fetch=fetch)
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()


def project_with_photos(api: Api, title: str, config: str) -> tuple[int, list[int]]:
    project = api.ok("POST", "/api/projects", {"title": title, "label_config": config})
    task_ids = api.upload(project["id"], [EXAMPLES / p for p in PHOTOS])
    assert len(task_ids) == len(PHOTOS)
    return project["id"], task_ids


def connect(api: Api, project: int, url: str, auth: tuple[str, str] | None = AUTH) -> tuple[int, dict]:
    """*Settings -> Model -> Connect model*, as the form posts it."""
    body = {"title": "CAST", "url": url, "project": project, "is_interactive": True, "extra_params": ""}
    if auth:
        body.update(auth_method="BASIC_AUTH", basic_auth_user=auth[0], basic_auth_pass=auth[1])
    return api.call("POST", "/api/ml", body)


def our_tree(backend, photo: str):
    return backend.backend.segmenter((EXAMPLES / photo).read_bytes())


def test_connect_pre_annotate_and_answer_prompts(label_studio, backend):
    api, config = label_studio, labeling_config()
    project, task_ids = project_with_photos(api, "CAST pre-annotation", config)
    broken = api.ok("POST", f"/api/projects/{project}/import?return_task_ids=true",
                    [{"image": f"/data/upload/{project}/missing.png"}])["task_ids"][0]

    status, out = connect(api, project, backend.url, auth=None)  # basic auth is required
    assert status == 400 and "authentication parameters" in json.dumps(out)
    status, ml = connect(api, project, backend.url)
    assert status == 201, ml
    assert ml["state"] == "CO" and ml["model_version"] == "bundled"

    out = api.ok("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
                 {"selectedItems": {"all": True, "excluded": []}})
    assert out["processed_items"] == 3  # every task was sent to the backend
    for task, photo in zip(task_ids, PHOTOS):
        (pred,) = api.ok("GET", f"/api/predictions?task={task}")
        tree = our_tree(backend, photo)
        regions = [r for r in pred["result"] if r["type"] == "brushlabels"]
        links = [r for r in pred["result"] if r["type"] == "relation"]
        assert pred["model_version"] == "bundled" and 0 < pred["score"] <= 1
        assert len(regions) == len(tree.nodes) and len(links) == len(tree.nodes) - len(tree.nodes_at(4))
        assert all(r["labels"] == ["part-of"] for r in links)
        for r in regions:  # every mask as Label Studio stored it is our segment
            node = tree.node(r["id"])
            assert r["value"]["brushlabels"] == [GRANULARITY[node.level]]
            mask = ls_rle_decode(r["value"]["rle"], (r["original_height"], r["original_width"]))
            assert np.array_equal(mask, tree.label_map(node.level) == node.id)
        check = subprocess.run([str(ls_python()), "-c", VALIDATE], input=json.dumps({"config": config, "predictions": [pred["result"]]}),
                               capture_output=True, text=True, timeout=120)
        assert json.loads(check.stdout) == [], check.stderr  # Label Studio's own validator
    assert api.ok("GET", f"/api/predictions?task={broken}") == []  # the missing image: no prediction

    # smart tools, through Label Studio's interactive route
    tree = our_tree(backend, PHOTOS[0])
    W, H = tree.size
    click = {"original_width": W, "original_height": H, "image_rotation": 0, "id": "p1", "from_name": "granularity",
             "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": True,
             "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["part"]}}
    answer = api.ok("POST", f"/api/ml/{ml['id']}/interactive-annotating", {"task": task_ids[0], "context": {"result": [click]}})
    (region,) = answer["data"]["result"]
    assert region["value"]["brushlabels"] == ["part"]
    segment = tree.segment_at(W // 2, H // 2, 3)
    assert np.array_equal(ls_rle_decode(region["value"]["rle"], (H, W)), tree.label_map(3) == segment)
    node = tree.nodes_at(4)[0]
    x0, y0, x1, y1 = node.bbox
    box = {"original_width": W, "original_height": H, "from_name": "box", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W, "height": 100 * (y1 - y0) / H,
                     "rotation": 0, "rectanglelabels": ["best match"]}}
    answer = api.ok("POST", f"/api/ml/{ml['id']}/interactive-annotating", {"task": task_ids[0], "context": {"result": [box]}})
    assert 0 < answer["data"]["score"] <= 1 and len(answer["data"]["result"]) == 1


def test_a_config_the_backend_cannot_serve_is_refused_with_its_message(label_studio, backend):
    no_relations = labeling_config().replace("<Relations>\n    <Relation value=\"part-of\" />\n  </Relations>\n", "")
    assert "Relations" not in no_relations
    project = label_studio.ok("POST", "/api/projects", {"title": "no relations", "label_config": no_relations})
    status, out = connect(label_studio, project["id"], backend.url)
    assert status == 400
    assert "no Relations tag; CAST links parts to wholes with relations" in json.dumps(out)  # what Label Studio shows


def test_the_command_line_backend_fetches_with_a_personal_access_token(label_studio, tmp_path):
    api = label_studio
    pat = api.ok("POST", "/api/token/")["token"]  # a personal access token (a JWT refresh token)
    project, task_ids = project_with_photos(api, "CAST personal token", labeling_config(levels=(3, 4)))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LABEL_STUDIO_URL": api.base, "LABEL_STUDIO_API_KEY": pat}
    proc = subprocess.Popen([sys.executable, "-m", "cast", "serve-labelstudio", "--model", "bundled", "--port", str(port),
                             "--levels", "3,4"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    assert json.loads(r.read())["model_version"] == "bundled"
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "not up"
                time.sleep(0.5)
        status, ml = connect(api, project, url, auth=None)
        assert status == 201 and ml["state"] == "CO", ml
        api.ok("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
               {"selectedItems": {"all": True, "excluded": []}})
        for task in task_ids:
            (pred,) = api.ok("GET", f"/api/predictions?task={task}")
            levels = {int(r["id"][1]) for r in pred["result"] if r["type"] == "brushlabels"}
            assert levels == {3, 4}  # --levels 3,4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
