"""Bounded memory and no lost work, without a browser: sessions released under a memory budget
answer with a clear message, annotations are autosaved after every edit and come back, the
autosave folder keeps to its cap and lifetime, writes survive a kill, and full-size downloads and
exports work from the disk copy of the label maps (or say the session expired when it is gone)."""

from __future__ import annotations

import gc
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.annotate import AnnotateCallbacks
from app.autosave import AutosaveStore, atomic_write
from app.callbacks import Callbacks
from app.service import Explorer
from app.sessions import SessionRegistry
from app.view import EXPIRED, View
from cast.keys import Level
from tests.app.helpers import app_config

BROWSER = "0123456789abcdef0123456789abcdef"
CONTROLS = (3, 0.5, True, False, False)  # level, opacity, boundaries, dim, equal widths


def photos(tmp: Path, photo: np.ndarray, n: int) -> list[Path]:
    """``n`` different photos (crops of the test photo)."""
    out = []
    for i in range(n):
        p = tmp / f"photo{i}.png"
        Image.fromarray(photo[i * 16: i * 16 + 320, i * 8: i * 8 + 400]).save(p)
        out.append(p)
    return out


def click_on(view: View, level: int = 3) -> SimpleNamespace:
    ys, xs = np.nonzero(view.maps[Level(level)] == view.maps[Level(level)][0, 0])
    return SimpleNamespace(index=(int(xs[len(xs) // 2]), int(ys[len(ys) // 2])))


@pytest.fixture()
def engine(tmp_path, models_dir):
    ex = Explorer(app_config(tmp_path, models_dir))
    yield ex
    ex.close()


def segment(cb: Callbacks, path: Path, browser: str | None = BROWSER) -> View:
    view = cb.segment(str(path), "bundled", *CONTROLS)[0]
    restored, _ = cb.restore(view, browser)
    return view if browser is None else restored


def test_sessions_beyond_the_budget_are_released_and_say_so(engine, tmp_path, photo):
    cb, ac = Callbacks(engine), AnnotateCallbacks(engine)
    first = segment(cb, photos(tmp_path, photo, 1)[0])
    one = engine.sessions.memory()
    assert 0 < one < 20 * 2**20  # display maps, photo, working-size tree: no full-size maps in memory
    assert first.tree.maps.offloaded and first.tree.maps.nbytes < 2**20
    first.drop_caches()  # what a session holds without its drawing caches (they go first under pressure)
    bare = engine.sessions.memory()
    assert bare < one
    engine.sessions.budget = one + bare + bare // 2  # room for the newest session and one more
    views = [first] + [segment(cb, p) for p in photos(tmp_path, photo, 4)[1:]]
    assert [v.expired for v in views] == [True, True, False, False]  # least recently used first
    assert engine.sessions.memory() <= engine.sessions.budget and engine.sessions.evicted == 2
    assert not (engine.sessions.folder / first.session).exists()  # its files went with it
    for call in (lambda: cb.on_overlay_click(first, *CONTROLS, click_on(views[3])),
                 lambda: cb.restyle(first, *CONTROLS),
                 lambda: cb.compare(first, 3),
                 lambda: ac.on_click(first, 3, False, click_on(views[3])),
                 lambda: ac.add_region(first, 3, "cat"),
                 lambda: ac.export_coco(first)):
        with pytest.raises(gr.Error, match="session expired; segment it again"):
            call()
    assert EXPIRED == "This photo's session expired; segment it again."
    # a used session moves to the back of the queue: the next upload releases the other one
    cb.on_overlay_click(views[2], *CONTROLS, click_on(views[2]))
    segment(cb, photos(tmp_path, photo, 5)[4])
    assert not views[2].expired and views[3].expired


def test_annotations_are_autosaved_after_every_edit_and_restored_after_eviction(engine, tmp_path, photo):
    cb, ac = Callbacks(engine), AnnotateCallbacks(engine)
    paths = photos(tmp_path, photo, 2)
    view = segment(cb, paths[0])
    assert view.autosave is not None and view.autosave.parent == engine.autosave.folder
    ac.on_click(view, 4, False, click_on(view, 4))
    ac.add_region(view, 4, "sky")
    saved = json.loads(view.autosave.read_text())
    assert saved["schema"] == "cast-autosave" and [r["label"] for r in saved["annotations"]["regions"]] == ["sky"]
    ac.relabel(view, 4, "cloud")
    assert json.loads(view.autosave.read_text())["annotations"]["regions"][0]["label"] == "cloud"
    ac.undo(view, 4)  # undo is an edit too
    assert json.loads(view.autosave.read_text())["annotations"]["regions"][0]["label"] == "sky"
    regions = view.annotations.to_dict()["regions"]

    engine.sessions.budget = 0  # only the newest session stays
    segment(cb, paths[1])
    assert view.expired and view.annotations is None
    path = ac.export_json(view)  # the work can still be downloaded: the autosave file
    assert Path(path) == view.autosave and "cast-autosave" in Path(path).read_text()

    again = segment(cb, paths[0])  # the same browser segments the same photo again
    assert not again.expired and again.annotations.to_dict()["regions"] == regions
    other = segment(cb, paths[0], browser="f" * 32)  # another browser starts empty
    assert other.annotations is None
    assert segment(cb, paths[0], browser=None).autosave is None  # API clients without a browser: no autosave

    fresh = segment(cb, paths[1], browser=None)  # the downloaded autosave file imports into the same photo only
    with pytest.raises(gr.Error, match="another photo or model"):
        ac.import_json(fresh, 4, path)
    same = segment(cb, paths[0], browser=None)
    ac.import_json(same, 4, path)
    assert same.annotations.to_dict()["regions"] == regions


def test_autosaved_annotations_survive_an_app_restart(tmp_path, models_dir, photo):
    path = photos(tmp_path, photo, 1)[0]
    ex = Explorer(app_config(tmp_path / "a", models_dir, autosave_dir=tmp_path / "autosave"))
    cb, ac = Callbacks(ex), AnnotateCallbacks(ex)
    view = segment(cb, path)
    ac.on_click(view, 4, False, click_on(view, 4))
    ac.add_region(view, 4, "sky")
    ex.close()
    ex = Explorer(app_config(tmp_path / "b", models_dir, autosave_dir=tmp_path / "autosave"))  # a new process's engine
    try:
        view = segment(Callbacks(ex), path)
        assert [r.label for r in view.annotations.regions.values()] == ["sky"]
    finally:
        ex.close()


def test_registry_forgets_views_whose_session_ended(tmp_path, engine, photo):
    cb = Callbacks(engine)
    view = segment(cb, photos(tmp_path, photo, 1)[0])
    folder = engine.sessions.folder / view.session
    assert folder.is_dir() and engine.sessions.live() == [view]
    del view
    gc.collect()  # Gradio dropped the session's state (its lifetime passed)
    assert engine.sessions.live() == [] and engine.sessions.memory() == 0 and not folder.exists()


class FakeView:  # what the registry reads of a view
    def __init__(self, session: str) -> None:
        self.session, self.expired, self.own_nbytes, self.result, self.page = session, False, 10, None, None

    def release(self) -> None:
        self.expired = True

    def drop_caches(self) -> None:
        pass


def test_registry_keeps_the_newest_view_even_over_budget():
    reg = SessionRegistry(0)
    views = [FakeView(str(i)) for i in range(3)]
    for v in views:
        reg.register(v)
    assert [v.expired for v in views] == [True, True, False] and reg.live() == [views[2]]


# -- the autosave folder ---------------------------------------------------------------------------

def test_autosave_folder_keeps_its_cap_and_lifetime(tmp_path):
    store = AutosaveStore(tmp_path / "saves", max_bytes=3000, ttl=3600)
    paths = []
    for i in range(6):
        p = store.path(f"{i:032x}", "ab" * 20, "bundled")
        store.save(p, {"regions": [], "pad": "x" * 900}, "photo.jpg", "ab" * 20, "bundled")
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))  # saved one after the other
        paths.append(p)
    store.clean()
    left = sorted(store.folder.glob("*.json"))
    assert sum(p.stat().st_size for p in left) <= 3000 and left == sorted(paths[-len(left):])  # oldest went first
    assert len(left) >= 2
    old = time.time() - 7200
    os.utime(left[0], (old, old))  # unused for longer than the lifetime
    assert store.clean() == 1 and not left[0].exists() and left[1].exists()
    assert store.load(left[1]) is not None and store.load(tmp_path / "missing.json") is None
    (store.folder / "broken.json").write_text("{not json")
    assert store.load(store.folder / "broken.json") is None
    with pytest.raises(ValueError):
        store.path("../../etc/passwd", "ab" * 20, "bundled")
    secret = store.browser_secret()  # the page's local-storage key outlives the app
    assert len(secret) >= 32 and AutosaveStore(store.folder, 3000, 3600).browser_secret() == secret


@pytest.mark.slow  # three writer processes killed mid-write
def test_atomic_write_leaves_old_or_new_file_after_a_kill(tmp_path):
    target = tmp_path / "save.json"
    atomic_write(target, json.dumps({"n": -1, "pad": ""}).encode())
    writer = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from app.autosave import atomic_write\n"
        "n = 0\n"
        "while True:\n"
        "    atomic_write(Path(sys.argv[1]), json.dumps({'n': n, 'pad': 'x' * 4_000_000}).encode())\n"
        "    if n == 0:\n"
        "        print('writing', flush=True)\n"
        "    n += 1\n"
    )
    root = Path(__file__).resolve().parents[2]
    for delay in (0.13, 0.31, 0.57):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=root, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        time.sleep(delay)  # somewhere in the middle of a write, most likely
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        doc = json.loads(target.read_text())  # a whole file, never a part
        assert doc["n"] >= 0 and len(doc["pad"]) == 4_000_000


# -- full-size maps from disk ------------------------------------------------------------------------

def test_full_size_downloads_and_exports_come_from_the_disk_copy(engine, tmp_path, photo, tiny_predictor):
    path = tmp_path / "big.png"
    Image.fromarray(np.asarray(Image.fromarray(photo).resize((1100, 900)))).save(path)
    result = engine.segment(path, "bundled")
    assert result.tree.maps.offloaded and (result.folder / "maps.npz").is_file()
    reference = engine.models.segmenter("bundled")(str(path))  # the same photo, maps kept in memory
    with zipfile.ZipFile(result.labels_path) as z:
        for lv in range(1, 5):
            png = np.asarray(Image.open(io.BytesIO(z.read(f"level{lv}.png"))))
            assert png.shape == (900, 1100) and np.array_equal(png, reference.label_maps[lv - 1])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read("superpixels.png")))), reference.superpixels)
    ac = AnnotateCallbacks(engine)
    view = View.of(result)
    engine.sessions.register(view)
    coco = json.loads(Path(ac.export_coco(view)).read_text())
    assert coco["images"][0]["width"] == 1100 and len(coco["annotations"]) == len(reference.nodes)
    from pycocotools import mask as mask_utils

    first = coco["annotations"][0]
    node = reference.node(first["node"])
    decoded = mask_utils.decode({"size": first["segmentation"]["size"], "counts": first["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), reference.label_maps[node.level - 1] == node.id)


def test_a_photo_whose_maps_left_the_disk_cache_is_segmented_again(tmp_path, models_dir, photo):
    ex = Explorer(app_config(tmp_path, models_dir, disk_cache_mb=0))  # only the newest result folder stays
    try:
        cb, ac = Callbacks(ex), AnnotateCallbacks(ex)
        a, b = photos(tmp_path, photo, 2)
        view = segment(cb, a)
        segment(cb, b)
        view.expired = False  # the session itself was not released (a big budget), only its files
        assert not view.result.folder.exists()
        with pytest.raises(gr.Error, match="session expired; segment it again"):
            ac.export_coco(view)
        again = segment(cb, a)  # recomputed from the upload
        assert again.result.folder.is_dir() and Path(ac.export_coco(again)).is_file()
        assert ex.disk_usage() == sum(p.stat().st_size for p in again.result.folder.iterdir())
    finally:
        ex.close()


def test_a_page_that_segments_again_replaces_its_own_view(engine, tmp_path, photo):
    cb = Callbacks(engine)
    a, b = photos(tmp_path, photo, 2)
    page = SimpleNamespace(session_hash="page-1")
    engine.sessions.budget = 0
    first = cb.segment(str(a), "bundled", *CONTROLS, request=page)[0]
    second = cb.segment(str(b), "bundled", *CONTROLS, request=page)[0]
    assert not first.expired and not second.expired  # one page: its new photo is not a second session
    del first
    gc.collect()  # Gradio keeps the page's latest view only
    assert engine.sessions.live() == [second]


def test_pages_unused_for_the_session_lifetime_are_released(engine, tmp_path, photo):
    cb = Callbacks(engine)
    old, new = (segment(cb, p) for p in photos(tmp_path, photo, 2))
    engine.sessions.ttl = 60.0
    assert engine.sessions.sweep(now=time.monotonic() + 30) == 0
    engine.sessions.touch(new)
    engine.sessions._used[engine.sessions._key(old)] -= 100  # last used 100 s ago
    assert engine.sessions.sweep() == 1 and old.expired and not new.expired
    assert engine.sessions.live() == [new]


def test_idle_pages_lose_their_drawing_caches_first(engine, tmp_path, photo):
    cb = Callbacks(engine)
    a, b = (segment(cb, p) for p in photos(tmp_path, photo, 2))
    assert a.cache.base is not None and b.cache.base is not None  # drawn when segmented
    engine.sessions._used[engine.sessions._key(a)] -= 100  # a is idle
    engine.sessions.sweep()
    assert a.cache.base is None and b.cache.base is not None and not a.expired
    cb.restyle(a, *CONTROLS)  # used again: drawn again
    assert a.cache.base is not None
    # over the budget: the other pages' caches go before any page is released (a is the newest now)
    engine.sessions.budget = engine.sessions.memory() - b.cache.nbytes // 2
    assert engine.sessions.enforce() == 0 and b.cache.base is None and a.cache.base is not None
    assert not a.expired and not b.expired


def test_display_maps_hold_level_1_and_superpixels_and_equal_resized_full_maps(engine, tmp_path, photo):
    from app.view import nearest_resize

    result = engine.segment(photos(tmp_path, photo, 1)[0], "bundled")
    maps, tree = result.maps, result.tree
    h, w = result.photo.shape[:2]
    full = tree.label_maps  # read back from the result's maps.npz
    for lv in range(1, 5):
        assert maps[Level(lv)].dtype == np.uint8
        assert np.array_equal(maps[Level(lv)], nearest_resize(full[lv - 1], (w, h)))
    assert np.array_equal(maps[Level.SUPERPIXEL], nearest_resize(tree.superpixels, (w, h)))
    assert not maps[Level.WHOLE].any() and maps[Level.WHOLE].shape == (h, w)
    assert maps.nbytes < 6.2 * w * h  # and the coarser levels looked up above (1 byte each), until dropped:
    maps.drop_caches()
    assert maps.nbytes < 3.2 * w * h  # level 1 (1 byte) + superpixels (2 bytes) per display pixel
    assert np.array_equal(maps[Level.L3], nearest_resize(full[2], (w, h)))  # looked up again
    assert set(maps) == {Level.WHOLE, Level.L1, Level.L2, Level.L3, Level.L4, Level.SUPERPIXEL}


def test_results_unused_for_a_lifetime_leave_the_cache(engine, tmp_path, photo):
    path = photos(tmp_path, photo, 1)[0]
    first = engine.segment(path, "bundled")
    assert engine.segment(path, "bundled") is first  # cached
    engine.sessions.sweep()
    assert engine.segment(path, "bundled") is first  # used just now: kept
    engine.cfg.session_ttl = 0
    time.sleep(0.01)
    engine.sessions.sweep()
    assert engine.segment(path, "bundled") is not first  # expired: segmented again


def test_a_restore_is_announced_once_per_page(engine, tmp_path, photo, capsys):
    cb, ac = Callbacks(engine), AnnotateCallbacks(engine)
    path = photos(tmp_path, photo, 1)[0]
    view = segment(cb, path)
    ac.on_click(view, 4, False, click_on(view, 4))
    ac.add_region(view, 4, "sky")
    capsys.readouterr()
    again = cb.segment(str(path), "bundled", *CONTROLS)[0]  # a new session of this browser (another page)
    again, announced = cb.restore(again, BROWSER, None)
    assert [r.label for r in again.annotations.regions.values()] == ["sky"]
    assert "Restored 1 region" in capsys.readouterr().out
    once_more = cb.segment(str(path), "bundled", *CONTROLS)[0]  # the same page segments the photo again
    once_more, still = cb.restore(once_more, BROWSER, announced)
    assert [r.label for r in once_more.annotations.regions.values()] == ["sky"]  # restored all the same,
    assert "Restored" not in capsys.readouterr().out and still == announced  # without a second notice
    ys, xs = np.nonzero(once_more.maps[Level(4)] != once_more.maps[Level(4)][0, 0])  # another level-4 segment
    ac.on_click(once_more, 4, False, SimpleNamespace(index=(int(xs[0]), int(ys[0]))))
    ac.add_region(once_more, 4, "sea")  # a newer save is news again
    newest = cb.segment(str(path), "bundled", *CONTROLS)[0]
    cb.restore(newest, BROWSER, announced)
    assert "Restored 2 regions" in capsys.readouterr().out
