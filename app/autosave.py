"""Annotations saved after every edit, so no work is lost to an expired session or a restart.

One small JSON file per (browser, photo, model): ``<folder>/<browser id>-<photo sha1[:16]>-<model
hash>.json``. The browser id is a random token the page keeps in the browser's local storage
(``gr.BrowserState``); the same browser segmenting the same photo with the same model gets its
regions back. Writes are atomic (a temporary file, flushed to disk, then renamed over the old one):
a kill leaves the previous save or the new one, never half a file. The folder is kept within a
size cap (oldest files removed first) and files unused for ``ttl`` seconds are removed. Pure
Python, no Gradio.

File format (``schema == "cast-autosave"``)::

    {"schema": "cast-autosave", "version": 1, "image": {"name": str, "sha1": str},
     "model": str, "saved": unix time, "annotations": cast.annotations.Annotations.to_dict()}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AutosaveStore", "SavedAnnotations", "AUTOSAVE_SCHEMA", "atomic_write"]

log = logging.getLogger("cast_explorer")

AUTOSAVE_SCHEMA = "cast-autosave"
_BROWSER_ID = re.compile(r"^[0-9a-f]{32}$")  # what the page generates (uuid4 hex); anything else is not used


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a restart after a kill) sees the old file or
    the new one, never a part: temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class SavedAnnotations:
    """What an autosave file holds."""

    path: Path
    image_name: str
    model: str
    saved: float  # unix time
    annotations: dict[str, Any]  # cast.annotations.Annotations.to_dict()


class AutosaveStore:
    """The autosave folder.

    Args:
        folder: where the files go (created).
        max_bytes: cap on the folder's total size; the least recently saved files go first.
        ttl: seconds after its last save that a file is removed.
    """

    def __init__(self, folder: Path, max_bytes: int, ttl: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.ttl = int(max_bytes), float(ttl)
        self._lock = threading.Lock()
        self._last_clean = 0.0
        self.clean()

    def browser_secret(self) -> str:
        """The key the page encrypts its browser id with in local storage (``gr.BrowserState``'s
        ``secret``): made once and kept in the folder, so ids still read after a restart (Gradio's
        default is a new key per start)."""
        path = self.folder / ".browser-secret"
        try:
            secret = path.read_text().strip()
            if len(secret) >= 32:
                return secret
        except OSError:
            pass
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        atomic_write(path, secret.encode())
        path.chmod(0o600)
        return secret

    @staticmethod
    def valid_browser(browser: str | None) -> bool:
        return bool(browser) and bool(_BROWSER_ID.match(str(browser)))

    def path(self, browser: str, image_sha1: str, model: str) -> Path:
        """The file of one browser's annotations of one photo under one model.

        Raises:
            ValueError: ``browser`` is not an id the page made.
        """
        if not self.valid_browser(browser):
            raise ValueError(f"not a browser id: {browser!r}")
        model_hash = hashlib.sha1(model.encode()).hexdigest()[:12]
        return self.folder / f"{browser}-{image_sha1[:16]}-{model_hash}.json"

    def save(self, path: Path, annotations: dict[str, Any], image_name: str, image_sha1: str, model: str) -> None:
        """Write (atomically) and keep the folder within its cap and lifetime."""
        doc = {"schema": AUTOSAVE_SCHEMA, "version": 1, "image": {"name": image_name, "sha1": image_sha1},
               "model": model, "saved": time.time(), "annotations": annotations}
        atomic_write(path, json.dumps(doc).encode())
        self.clean(keep=path, every=10.0)

    def load(self, path: Path) -> SavedAnnotations | None:
        """The saved annotations, or None when there is no (readable) file."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(doc, dict) or doc.get("schema") != AUTOSAVE_SCHEMA or not isinstance(doc.get("annotations"), dict):
            return None
        os.utime(path)  # a file that is read back is in use: its lifetime starts again
        return SavedAnnotations(path, str(doc.get("image", {}).get("name", "")), str(doc.get("model", "")),
                                float(doc.get("saved", 0)), doc["annotations"])

    def clean(self, keep: Path | None = None, every: float = 0.0) -> int:
        """Remove files past their lifetime, then the oldest beyond the size cap (never ``keep``);
        at most once per ``every`` seconds. Returns how many files were removed."""
        now = time.time()
        with self._lock:
            if now - self._last_clean < every:
                return 0
            self._last_clean = now
            entries = []
            for p in self.folder.glob("*.json"):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, p))
            for p in self.folder.glob(".*.tmp"):  # left by a kill mid-write
                try:
                    if now - p.stat().st_mtime > 60:
                        p.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue
            entries.sort()
            removed = 0
            kept = []
            for mtime, size, p in entries:
                if now - mtime > self.ttl and p != keep:
                    p.unlink(missing_ok=True)
                    removed += 1
                else:
                    kept.append((mtime, size, p))
            total = sum(size for _, size, _ in kept)
            for _mtime, size, p in kept:
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                p.unlink(missing_ok=True)
                total -= size
                removed += 1
            if removed:
                log.info("autosave: removed %d old files", removed)
            return removed
