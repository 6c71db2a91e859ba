"""The backend over HTTP, spoken to as Label Studio's server speaks to it (routes, bodies, the
answers it reads, errors as one-line status reasons), on a small model and local images."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from cast.exports import GRANULARITY, LabelStudioTarget, labelstudio_record, ls_rle_decode, validate_labelstudio
from cast.labelstudio import FetchSettings, ImageFetcher, LabelStudioBackend, make_server
from cast.labelstudio.config import labeling_config

CONFIG = labeling_config()
AUTH = ("annotator", "s3cret pass")


class CountingSegmenter:
    """The test predictor, counting the images the model runs on."""

    def __init__(self, predictor) -> None:
        self.predictor, self.calls = predictor, 0

    def __call__(self, image):
        self.calls += 1
        return self.predictor(image)

    def prepare(self, image):
        return self.predictor.prepare(image)

    def read_batch(self, items):
        self.calls += len(items)
        return self.predictor.read_batch(items)

    def finish(self, item, readout):
        return self.predictor.finish(item, readout)


@pytest.fixture(scope="module")
def images(tmp_path_factory, photo):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(photo[:150, :200]).save(folder / "a.png")
    Image.fromarray(photo[200:320, 100:260]).save(folder / "b.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.fixture(scope="module")
def server(tiny_predictor, images):
    segmenter = CountingSegmenter(tiny_predictor)
    backend = LabelStudioBackend(segmenter, "tiny-test", ImageFetcher(FetchSettings(local_root=images)), cache_size=4)
    srv = make_server(backend, port=0, basic_auth=AUTH)
    srv.serve_in_thread()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(server, method: str, path: str, body=None, auth=AUTH, raw: bytes | None = None):
    """``(status, reason, JSON)`` as Label Studio's requests-based client sees them."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.reason, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.reason, json.loads(e.read())


def predict(server, tasks, context=None, config=CONFIG):
    return call(server, "POST", "/predict", {"tasks": tasks, "project": "7.1700000000", "label_config": config,
                                              "params": {"login": None, "password": None, "context": context}})


def test_health_setup_and_the_model_version(server):
    assert call(server, "GET", "/health") == (200, "OK", {"status": "UP", "model_class": "CAST", "model_version": "tiny-test"})
    status, _, out = call(server, "POST", "/setup", {"project": "7.1700000000", "schema": CONFIG, "hostname": "http://x",
                                                     "access_token": "t", "extra_params": ""})
    assert (status, out) == (200, {"model_version": "tiny-test"})
    assert call(server, "GET", "/versions")[2]["versions"] == ["tiny-test"]
    assert call(server, "POST", "/webhook", {"action": "START_TRAINING", "project": {}})[:2] == (200, "OK")


def test_a_config_it_cannot_serve_is_refused_with_a_reason_label_studio_shows(server):
    status, reason, out = call(server, "POST", "/setup", {"project": "8.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    # Label Studio shows "400 Client Error: <reason> for url: ..." and drops the body
    assert status == 400 and reason == out["error"] == "the labeling config has no BrushLabels on an Image; CAST's regions are brush masks"
    status, reason, _ = predict(server, [{"id": 1, "data": {"image": "a.png"}}], config=CONFIG.replace("Relations", "Relationz"))
    assert status == 400 and "no Relations" in reason


def test_requests_without_basic_auth_are_refused(server):
    for auth in (None, ("annotator", "wrong")):
        status, reason, _ = call(server, "GET", "/health", auth=auth)
        assert status == 401 and "basic auth" in reason


def test_bad_requests_get_a_one_line_reason_not_a_traceback(server):
    assert call(server, "POST", "/predict", raw=b"{not json")[:2] == (400, "request body is not JSON")
    assert call(server, "POST", "/predict", {"tasks": "no"})[:2] == (400, "the request has no list of tasks")
    status, reason, _ = call(server, "POST", "/predict", {"tasks": [], "project": "99.1"})
    assert status == 400 and "no labeling config" in reason
    assert call(server, "GET", "/nothing")[0] == 404 and call(server, "GET", "/predict")[0] == 405


def test_pre_annotation_is_the_export_writers_tree_and_a_broken_task_does_not_stop_the_others(server, images, tiny_predictor):
    tasks = [{"id": 1, "data": {"image": "a.png"}}, {"id": 2, "data": {"image": "broken.png"}},
             {"id": 3, "data": {"image": "../outside.png"}}, {"id": 5, "data": {"image": "http://203.0.113.7/x.jpg"}},
             {"id": 6, "data": {"text": "no image"}}, {"id": 4, "data": {"image": "b.png"}}]
    status, _, out = predict(server, tasks)
    assert status == 200 and len(out["results"]) == 6
    assert out["results"][1:5] == [[], [], [], []]  # no prediction: Label Studio asks again next time
    errors = {e["task"]: e["error"] for e in out["errors"]}
    assert list(errors) == [2, 3, 5, 6]
    assert errors[2].startswith("broken.png: ") and "outside the local files folder" in errors[3]
    assert "host 203.0.113.7:80 is not Label Studio's and not an allowed host" in errors[5]
    assert errors[6] == "task 6: no image in data.image"
    tasks = [tasks[0], tasks[-1]]
    out["results"] = [out["results"][0], out["results"][-1]]
    for task, pred in zip(tasks, out["results"]):
        tree = server.backend.tree(task["data"]["image"])  # the tree it made (in a batch: padding may differ from alone)
        target = LabelStudioTarget(labels=tuple(GRANULARITY[lv] for lv in (4, 3, 2, 1)))
        expected = labelstudio_record(tree, task["data"]["image"], model_version="tiny-test", target=target)["predictions"][0]
        assert pred == expected  # the one writer, cast.exports.labelstudio_record
        assert pred["model_version"] == "tiny-test" and 0 < pred["score"] <= 1
        assert not validate_labelstudio([{"data": task["data"], "predictions": [pred]}], CONFIG)
        regions = [r for r in pred["result"] if r["type"] == "brushlabels"]
        assert len(regions) == len(tree.nodes)
        assert {r["value"]["brushlabels"][0] for r in regions} == set(GRANULARITY.values())  # labelled by level here
        links = [r for r in pred["result"] if r["type"] == "relation"]
        assert len(links) == len(tree.nodes) - len(tree.nodes_at(4)) and all(r["labels"] == ["part-of"] for r in links)


def test_levels_restrict_pre_annotation_and_link_to_the_nearest_kept_whole(tiny_predictor, images):
    tree = tiny_predictor(images / "a.png")
    target = LabelStudioTarget(levels=(2, 4))
    pred = labelstudio_record(tree, "a.png", target=target)["predictions"][0]
    regions = {r["id"] for r in pred["result"] if r["type"] == "brushlabels"}
    assert regions == {str(n.key) for n in tree.nodes if n.level in (2, 4)}
    for link in (r for r in pred["result"] if r["type"] == "relation"):
        child = tree.node(link["from_id"])
        assert child.level == 2 and link["to_id"] == str(tree.path_to_root(2, child.id)[2].key)


def _click(x: float, y: float, label: str, positive: bool = True) -> dict:
    return {"original_width": 200, "original_height": 150, "image_rotation": 0, "id": "k", "from_name": "granularity",
            "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}


def test_a_click_answers_the_segment_under_it_at_the_granularity_its_label_chooses(server, tiny_predictor, images):
    tree = tiny_predictor(images / "a.png")
    task = {"id": 1, "data": {"image": "a.png"}}
    calls = server.backend.segmenter.calls
    for label, level in (("whole", 4), ("part", 3), ("sub-part", 2), ("fine part", 1)):
        status, _, out = predict(server, [task], {"result": [_click(30.0, 40.0, label)]})
        assert status == 200 and len(out["results"]) == 1
        answer = out["results"][0]
        (region,) = answer["result"]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [label]
        assert (region["from_name"], region["to_name"]) == ("label", "image")
        node_id = tree.segment_at(60, 60, level)  # 30 % of 200 px, 40 % of 150 px
        mask = ls_rle_decode(region["value"]["rle"], (150, 200))
        assert np.array_equal(mask, tree.label_map(level) == node_id), label
    assert server.backend.segmenter.calls == calls  # the tree was cached by the pre-annotation: no model run
    # a negative (Alt) click takes its segment out of the answer
    two = [_click(30.0, 40.0, "part"), _click(90.0, 90.0, "part")]
    both = ls_rle_decode(predict(server, [task], {"result": two})[2]["results"][0]["result"][0]["value"]["rle"], (150, 200))
    minus = ls_rle_decode(predict(server, [task], {"result": [two[0], {**two[1], "is_positive": False}]})[2]
                          ["results"][0]["result"][0]["value"]["rle"], (150, 200))
    assert both.sum() > minus.sum() and np.array_equal(minus, tree.label_map(3) == tree.segment_at(60, 60, 3))


def test_a_box_answers_the_tree_node_that_matches_it_best(server, tiny_predictor, images):
    tree = tiny_predictor(images / "b.png")
    W, H = tree.size
    node = max(tree.nodes_at(2), key=lambda n: n.area)
    x0, y0, x1, y1 = node.bbox
    box = {"original_width": W, "original_height": H, "type": "rectanglelabels", "from_name": "box", "to_name": "image",
           "value": {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W, "height": 100 * (y1 - y0) / H,
                     "rotation": 0, "rectanglelabels": ["best match"]}}
    status, _, out = predict(server, [{"id": 4, "data": {"image": "b.png"}}], {"result": [box]})
    assert status == 200
    (region,) = out["results"][0]["result"]
    mask = ls_rle_decode(region["value"]["rle"], (H, W))
    best, best_iou = None, -1.0
    rect = np.zeros((H, W), bool)
    rect[y0:y1, x0:x1] = True
    for n in tree.nodes:
        m = tree.label_map(n.level) == n.id
        iou = (m & rect).sum() / (m | rect).sum()
        if iou > best_iou:
            best, best_iou = n, iou
    assert region["id"] == str(best.key) and np.array_equal(mask, tree.label_map(best.level) == best.id)
    assert out["results"][0]["score"] == pytest.approx(best_iou, abs=1e-6)
    assert region["value"]["brushlabels"] == [GRANULARITY[best.level]]


def test_prompts_that_cannot_be_answered_say_why(server):
    task = {"id": 1, "data": {"image": "a.png"}}
    assert predict(server, [task], {"result": [{"type": "polygonlabels", "value": {}}]})[:2] == \
        (400, "smart tools answered: keypoints and rectangles, got ['polygonlabels']")
    status, reason, _ = predict(server, [{"id": 9, "data": {"image": "gone.png"}}], {"result": [_click(1, 1, "part")]})
    assert status == 400 and reason == "gone.png: no such file"
    assert predict(server, [task, task], {"result": [_click(1, 1, "part")]})[0] == 400


def test_trees_are_cached_per_image_and_the_cache_is_bounded(tiny_predictor, images):
    segmenter = CountingSegmenter(tiny_predictor)
    backend = LabelStudioBackend(segmenter, "v", ImageFetcher(FetchSettings(local_root=images)), cache_size=2)
    for ref in ("a.png", "b.png", "a.png"):
        backend.tree(ref)
    assert segmenter.calls == 2  # the second a.png came from the cache
    Image.open(images / "a.png").rotate(90, expand=True).save(images / "c.png")
    backend.tree("c.png")  # a third image: the least recently used (b.png) goes
    assert "b.png" not in backend.trees and "a.png" in backend.trees and "c.png" in backend.trees
    backend.tree("b.png")
    assert segmenter.calls == 4
    with pytest.raises(ValueError, match="levels are 1"):
        LabelStudioBackend(segmenter, "v", ImageFetcher(FetchSettings()), levels=(0, 5))
