"""The app's engine without a server: which models are offered, loading and caching them, the
default model online (pre-populated Hub cache) and offline, and the ViT comparison."""

from __future__ import annotations

import numpy as np
import pytest

import cast
from app.service import Explorer, ModelStore
from cast.weights import PUBLISHED
from tests.app.helpers import ABSENT_MODEL, app_config
from tests.helpers import populate_hub_cache, random_state_dict, write_deit_file


def test_selector_lists_published_bundled_and_own_folders(explorer, models_dir):
    choices = {c.name: c for c in explorer.models.choices()}
    assert choices["bundled"].kind == "bundled" and "H-CAST" in choices["bundled"].label
    assert choices["bundled_flat"].kind == "bundled" and "one head" in choices["bundled_flat"].label
    assert explorer.models.available_locally("bundled_flat")
    assert {n for n, w in PUBLISHED.items() if w.arch.startswith("cast")} <= set(choices)
    assert {"cast_small_deep.deit_in1k", "cast_base_deep.mocov3_in1k"} <= set(choices)
    assert all("GB download" in choices[n].label for n, w in PUBLISHED.items() if w.arch.startswith("cast"))
    assert not any(n.startswith("vit_") for n in choices)  # ViT baselines are not CAST models
    folders = [c for c in choices.values() if c.kind == "folder"]
    assert [c.name for c in folders] == [str((models_dir / "my_cast").resolve())]  # the ViT folder is not listed


def test_models_load_once_are_bounded_and_failures_are_clear(tmp_path, models_dir):
    store = ModelStore(app_config(tmp_path, models_dir, max_models=1))
    folder = str((models_dir / "my_cast").resolve())
    first = store.segmenter("bundled")
    assert store.segmenter("bundled") is first  # cached
    assert isinstance(store.segmenter(folder), cast.Predictor)
    assert store.loaded() == [folder]  # bounded: the least recently used model was dropped
    with pytest.raises(cast.CastLoadError, match="unknown model"):
        store.segmenter("/etc")  # only listed models can be asked for
    with pytest.raises(cast.CastLoadError, match="not in the local Hub cache"):
        store.segmenter(ABSENT_MODEL)
    assert store.loaded() == [folder]  # a failed load leaves the loaded model in place


def test_default_is_the_published_model_when_the_hub_cache_has_it(tmp_path, models_dir, hub_cache):
    w = PUBLISHED["cast_small.deit_in1k"]
    ref = hub_cache / ("models--" + w.hub_repo.replace("/", "--")) / "refs" / "main"
    previous = ref.read_text() if ref.exists() else None  # the cache is shared with tests/test_hub.py
    path = write_deit_file(tmp_path / "deit.pth", random_state_dict("deit_family_cast_small", seed=3))
    populate_hub_cache(hub_cache, w.hub_repo, {w.hub_file: path}, commit="a" * 40)
    ex = Explorer(app_config(tmp_path / "ex", models_dir, default_model="cast_small.deit_in1k"))
    try:
        assert ex.default == "cast_small.deit_in1k" and ex.notice is None
        assert ex.models.segmenter(ex.default).info.weights == "cast_small.deit_in1k"
    finally:
        ex.close()
        if previous is None:
            ref.unlink()
        else:
            ref.write_text(previous)


def test_offline_default_falls_back_to_the_bundled_model(tmp_path, models_dir):
    ex = Explorer(app_config(tmp_path, models_dir, default_model=ABSENT_MODEL))
    try:
        assert ex.default == "bundled"  # at once, whatever happens to the default
        assert ex.wait_for_default(30) and ex.startup.state == "failed"
        assert "Offline mode" in ex.notice and ABSENT_MODEL in ex.notice
    finally:
        ex.close()


def test_compare_segments_the_same_image_with_the_vit_baseline(explorer, uploads):
    result = explorer.segment(uploads["good.jpg"], "bundled")
    vit_tree = explorer.compare(result)
    assert explorer.compare(result) is vit_tree  # cached on the result
    assert vit_tree.model["name"].startswith("vit_tiny")
    assert vit_tree.working_image.shape == result.tree.working_image.shape
    for level in (1, 2, 3, 4):  # nested levels, as many segments as the k-means asked for at most
        assert 1 <= len(vit_tree.nodes_at(level)) <= result.tree.num_clusters[level - 1]
    np.testing.assert_array_equal(vit_tree.parents[0][vit_tree.label_maps[0]], vit_tree.label_maps[1])
    with pytest.raises(cast.CastLoadError, match="no ViT baseline"):
        explorer.models.baseline("some/other-model")


def test_result_cache_is_bounded_by_entries_and_pixels():
    from app.service import _LRU

    lru = _LRU(3, max_weight=100)
    for i in range(5):
        lru.put(i, str(i), weight=10)
    assert lru.keys() == [2, 3, 4]  # entries
    lru.get(2)  # used: now the most recent
    lru.put("big", "b", weight=85)
    assert lru.keys() == [2, "big"]  # weight: 10 + 85 <= 100, the least recently used went first
    lru.put("huge", "h", weight=1000)
    assert lru.keys() == ["huge"]  # the newest entry is kept even alone over the bound
    assert lru.pop("huge") == "h" and lru.pop("huge") is None


def test_result_cache_drops_entries_unused_for_a_while():
    import time

    from app.service import _LRU

    lru = _LRU(5)
    lru.put("a", 1)
    lru.put("b", 2)
    time.sleep(0.05)
    lru.put("c", 3)
    assert lru.get("a") == 1  # used again: young
    assert lru.expire(0.03) == 1 and lru.keys() == ["c", "a"]  # only b was left unused
    assert lru.expire(10) == 0 and lru.expire(0) == 2 and lru.keys() == []


def test_models_with_concepts_show_the_semantic_path(explorer, models_dir, uploads):
    from app.render import concepts_html
    from app.view import View

    folder = str((models_dir / "my_cast").resolve())
    result = explorer.segment(uploads["good.jpg"], folder)
    tree = result.tree
    assert [s.level for s in tree.concepts] == [1, 2, 3] and all(n.concepts for n in tree.nodes)
    view = View.of(result)
    key = tree.nodes_at(2)[0].key
    info = view.info(key)
    out = concepts_html(tree, result.concept_thumbnails, info)
    assert out.count('class="concept-step"') == 3 and out.count("data:image/jpeg;base64,") >= 3
    assert f"Selected segment {key}" in out
    no_concepts = explorer.segment(uploads["good.jpg"], "bundled").tree
    assert "no concept hierarchy" in concepts_html(no_concepts, None)


def test_a_default_that_is_not_here_loads_in_the_background_and_pages_switch(tmp_path, models_dir, monkeypatch):
    from app.callbacks import Callbacks

    folder = str((models_dir / "my_cast").resolve())
    gate = __import__("threading").Event()
    real = ModelStore.segmenter

    def slow_segmenter(self, name):  # stands for a download in progress
        if name == folder:
            gate.wait(30)
        return real(self, name)

    monkeypatch.setattr(ModelStore, "available_locally", lambda self, name: name == "bundled")
    monkeypatch.setattr(ModelStore, "segmenter", slow_segmenter)
    ex = Explorer(app_config(tmp_path, models_dir, default_model=folder, startup_wait=0.0))
    try:
        assert ex.default == "bundled" and ex.startup.state == "loading"  # served at once
        assert "Loading the default model" in ex.notice
        ex.startup.done, ex.startup.total = 30 * 2**20, 120 * 2**20
        assert "30 of 120 MB" in ex.notice
        cb = Callbacks(ex)
        notice, model, active, timer, browser = cb.page_open(None)
        assert model == active == "bundled" and timer.active and "Loading" in notice["value"]
        assert ex.autosave.valid_browser(browser)  # a first visit gets an id, kept by the browser
        assert cb.page_open(browser)[4] == browser and cb.page_open("../etc")[4] != "../etc"
        skip = {"__type__": "update"}  # gr.skip(): leave the component as it is
        assert cb.poll_startup("bundled", "bundled")[1:3] == (skip, skip)  # still loading: nothing switches
        gate.set()
        assert ex.wait_for_default(30) and ex.startup.state == "ready" and ex.default == folder
        notice, model, active, timer = cb.poll_startup("bundled", "bundled")
        assert model == active == folder and not timer.active  # the open page switches to it
        _, model, active, timer = cb.poll_startup("cast_small.deit_in1k", "cast_small.deit_in1k")
        assert (model, active) == (skip, skip) and not timer.active  # someone who picked a model keeps it
    finally:
        gate.set()
        ex.close()
