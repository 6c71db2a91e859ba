"""One real-browser test: Debian's Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # a launched server driven in Chromium

CHROMIUM = os.environ.get("CAST_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def click_at(image, fx: float, fy: float) -> None:
    """Click an image at a fraction of its width and height (scrolled into view first)."""
    image.scroll_into_view_if_needed()
    box = image.bounding_box()
    assert box is not None
    image.click(position={"x": box["width"] * fx, "y": box["height"] * fy})


def _panel_text(page) -> str:
    return page.locator("#segment-panel").inner_text()


def test_upload_click_overlay_and_tree(app_server, uploads, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium)"
    url, _ = app_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded")
            expect(page.locator("#notice")).to_contain_text("Offline mode", timeout=30_000)
            page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=30_000)
            page.set_input_files("#input-image input[type=file]", str(uploads["wide.jpg"]))

            # the upload is segmented: overlay, tree and per-level predictions appear
            page.wait_for_selector("#overlay img", timeout=60_000)
            page.wait_for_selector('#tree rect[data-node="L4-0"]', timeout=60_000)
            expect(page.locator("#level-predictions")).to_contain_text("level 4", timeout=30_000)
            empty = _panel_text(page)
            assert "No segment selected" in empty

            # click the overlay: the segment under the click (level 2 by default) fills the panel
            click_at(page.locator("#overlay img"), 0.3, 0.6)
            expect(page.locator("#segment-panel h4")).to_contain_text("Segment L2-", timeout=30_000)
            clicked = page.locator("#segment-panel h4").inner_text()
            expect(page.locator("#tree .selected")).to_have_count(1)
            # masked-image recognition arrives after the click
            expect(page.locator("#segment-panel")).to_contain_text("Segment on its own", timeout=30_000)

            # click a tree node: the panel switches to it and the level control follows
            target = "L4-1" if "L4-1" not in clicked else "L4-0"
            node = page.locator(f'#tree rect[data-node="{target}"]')
            node.scroll_into_view_if_needed()
            node.click()
            expect(page.locator("#segment-panel h4")).to_have_text(f"Segment {target}", timeout=30_000)
            expect(page.locator("#level input[value='4']")).to_be_checked()
            expect(page.locator("#tree .breadcrumb .crumb.current")).to_contain_text(target)
            assert _panel_text(page) != empty

            # and a child chip in the panel navigates down the tree
            chip = page.locator("#segment-panel .chip").last
            child = chip.get_attribute("data-node")
            chip.click()
            expect(page.locator("#segment-panel h4")).to_have_text(f"Segment {child}", timeout=30_000)

            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # a model that cannot be loaded (offline, not cached): a message, and the previous one stays
            model_input = page.locator("#model input")
            before = model_input.input_value()
            model_input.click()
            page.get_by_role("option", name=re.compile(r"^cast_small_deep\.mocov3_in1k")).click()
            toasts = page.locator("[data-testid='toast-text']", has_text="could not be loaded")
            expect(toasts.first).to_be_visible(timeout=30_000)
            expect(model_input).to_have_value(before, timeout=30_000)
            page.locator("#status").click()  # leave the dropdown: no second attempt to load (checked below,
            # once the Compare round trips queued after it have come back)

            # Compare: CAST and ViT + k-means side by side, a click outlines the segment in both
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-button").click()
            page.wait_for_selector("#compare-cast img", timeout=60_000)
            page.wait_for_selector("#compare-vit img", timeout=60_000)
            click_at(page.locator("#compare-cast img"), 0.5, 0.5)
            expect(page.locator("#compare-summary")).to_contain_text("IoU", timeout=30_000)
            expect(toasts).to_have_count(1)
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()


def test_annotate_two_segments_label_undo_redo_export(app_server, uploads):
    """The Annotate flow: pick two segments (the second with shift), label them, undo, redo,
    export COCO and read the file."""
    import json

    from playwright.sync_api import expect, sync_playwright
    from pycocotools import mask as mask_utils

    url, _ = app_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#input-image input[type=file]", state="attached", timeout=30_000)
            page.set_input_files("#input-image input[type=file]", str(uploads["wide.jpg"]))
            page.wait_for_selector('#tree rect[data-node="L4-0"]', timeout=60_000)
            page.get_by_role("tab", name="Annotate").click()
            overlay = page.locator("#annotate-overlay img")
            overlay.wait_for(timeout=30_000)
            click_at(overlay, 0.25, 0.5)
            expect(page.locator("#annotate-picked")).to_contain_text("1 picked", timeout=30_000)
            page.keyboard.down("Shift")
            click_at(overlay, 0.75, 0.5)
            page.keyboard.up("Shift")
            expect(page.locator("#annotate-picked")).to_contain_text("2 picked", timeout=30_000)
            page.locator("#region-label textarea").fill("sky and sea")
            page.locator("#region-label textarea").press("Enter")
            expect(page.locator("#regions")).to_contain_text("sky and sea", timeout=30_000)
            expect(page.locator("#regions .region")).to_have_count(1)
            page.locator("#undo").click()
            expect(page.locator("#regions")).to_contain_text("No regions yet", timeout=30_000)
            page.keyboard.press("Control+y")  # the documented shortcut for redo
            expect(page.locator("#regions")).to_contain_text("sky and sea", timeout=30_000)
            page.keyboard.press("Control+z")  # and for undo
            expect(page.locator("#regions")).to_contain_text("No regions yet", timeout=30_000)
            page.locator("#redo").click()
            expect(page.locator("#regions")).to_contain_text("sky and sea", timeout=30_000)
            page.locator("#export-coco").click()
            link = page.locator("#annotate-file a").first
            link.wait_for(timeout=30_000)
            with page.expect_download(timeout=30_000) as download:  # the file as the browser saves it
                link.click()
            coco = json.loads(Path(download.value.path()).read_text())
            assert download.value.suggested_filename == "coco.json"
            assert not errors, errors
        finally:
            browser.close()
    assert [c["name"] for c in coco["categories"]] == ["sky and sea"] and len(coco["annotations"]) == 1
    (ann,) = coco["annotations"]
    assert ann["node"] == "R1" and ann["parent_id"] is None and coco["images"][0]["width"] == 1000
    seg = ann["segmentation"]
    mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert mask.shape == (600, 1000) and 0 < mask.sum() == ann["area"]
