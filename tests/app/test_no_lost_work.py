"""No lost work, in a real browser against ``python app.py``: a session released for the memory
budget says so, its annotations come back when the same browser segments the photo again, and
after the app is killed (SIGKILL) and started again they are still there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app.helpers import free_port
from tests.app.test_browser import ARGS, CHROMIUM, click_at

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]


def start_app(tmp: Path, port: int, run: int) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_SERVER_PORT=str(port), CAST_APP_DEFAULT_MODEL="bundled",
               CAST_APP_PRECOMPUTE_EXAMPLES="0", CAST_APP_TEMP_DIR=str(tmp / "tmp"),
               CAST_APP_AUTOSAVE_DIR=str(tmp / "autosave"), CAST_APP_SESSION_MEMORY_MB="0")  # one session at a time
    log = open(tmp / f"app{run}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                json.loads(r.read())
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError((tmp / f"app{run}.log").read_text()[-3000:])


def open_page(page, url: str) -> None:
    """Load the app's page. A page whose server was just killed may still be reconnecting, which
    aborts a navigation now and then (net::ERR_ABORTED): that attempt is repeated, twice at most."""
    from playwright.sync_api import Error

    for attempt in range(3):
        try:
            page.goto(url, wait_until="domcontentloaded")
            break
        except Error:
            if attempt == 2:
                raise
            time.sleep(1)
    page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=30_000)


def segment(page, path: Path) -> None:
    page.get_by_role("tab", name="Explore").click()
    page.set_input_files("#input-image input[type=file]", str(path))
    page.locator("#segment-button").click()
    page.wait_for_selector('#tree rect[data-node="L4-0"]', timeout=60_000)


def add_region(page, fx: float, label: str) -> None:
    from playwright.sync_api import expect

    overlay = page.locator("#annotate-overlay img")
    picked = page.locator("#annotate-picked")
    # A click that lands while the page is still busy with the previous answer (a restore
    # re-draws the overlay) can be dropped; a plain click only ever picks that one segment, so
    # it is repeated until the pick shows.
    for attempt in range(3):
        click_at(overlay, fx, 0.5)
        try:
            expect(picked).to_contain_text("1 picked", timeout=10_000 if attempt < 2 else 30_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    page.locator("#region-label textarea").fill(label)
    page.locator("#region-label textarea").press("Enter")
    expect(page.locator("#regions")).to_contain_text(label, timeout=30_000)


def test_released_session_says_so_and_work_survives_eviction_and_a_kill(tmp_path, uploads, photo):
    from playwright.sync_api import expect, sync_playwright

    other = tmp_path / "other.png"
    Image.fromarray(np.ascontiguousarray(photo[::-1])).save(other)
    port = free_port()
    proc = start_app(tmp_path, port, 0)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            alice = browser.new_context(viewport={"width": 1300, "height": 1600}).new_page()  # own local storage
            bob = browser.new_context(viewport={"width": 1300, "height": 1600}).new_page()
            url = f"http://127.0.0.1:{port}/"
            for page in (alice, bob):
                open_page(page, url)
            segment(alice, uploads["wide.jpg"])
            alice.get_by_role("tab", name="Annotate").click()
            alice.locator("#annotate-overlay img").wait_for(timeout=30_000)
            add_region(alice, 0.25, "sky")

            segment(bob, other)  # the budget holds one session: Alice's is released
            click_at(alice.locator("#annotate-overlay img"), 0.75, 0.5)
            expect(alice.get_by_text(re.compile("session expired; segment it again")).first).to_be_visible(timeout=30_000)

            segment(alice, uploads["wide.jpg"])  # the same browser, the same photo: the work is back
            expect(alice.get_by_text(re.compile("Restored 1 region")).first).to_be_visible(timeout=30_000)
            alice.get_by_role("tab", name="Annotate").click()
            expect(alice.locator("#regions")).to_contain_text("sky", timeout=30_000)
            add_region(alice, 0.75, "sea")  # the second edit, saved before its answer came

            os.killpg(proc.pid, signal.SIGKILL)  # no shutdown: the process just stops
            proc.wait(timeout=30)
            proc = start_app(tmp_path, port, 1)
            open_page(alice, url)  # the page as the browser opens it again (its local storage kept)
            segment(alice, uploads["wide.jpg"])
            expect(alice.get_by_text(re.compile("Restored 2 regions")).first).to_be_visible(timeout=30_000)
            alice.get_by_role("tab", name="Annotate").click()
            expect(alice.locator("#regions .region")).to_have_count(2, timeout=30_000)
            expect(alice.locator("#regions")).to_contain_text("sea")
            browser.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    assert len(list((tmp_path / "autosave").glob("*.json"))) == 1  # one browser, one photo, one model
