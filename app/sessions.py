"""A memory budget for every session's state together, enforced least-recently-used first.

Each page's :class:`~app.view.View` registers here when it is made and is touched by every event.
When the views' memory (their own drawing caches and maps, plus each result they show, counted
once however many views share it) passes the budget, the pages used longest ago are *released*:
their heavy parts are dropped and they answer later events with "this photo's session expired;
segment it again" (their annotations were autosaved, :mod:`app.autosave`). Pages unused for the
session lifetime are released the same way. The registry holds views weakly: state Gradio deletes
is forgotten with it. Pure Python, no Gradio.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .view import View

__all__ = ["SessionRegistry", "trim_memory", "tune_malloc"]

log = logging.getLogger("cast_explorer")


_libc: Any = None
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (glibc's malloc.h)


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):  # not glibc: nothing to tune
            _libc = False
    return _libc


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).
    Without it, memory freed by released sessions and by a segmentation's temporaries stays in
    the process's heap and its resident size does not come down."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def tune_malloc(arenas: int = 2, mmap_threshold: int | None = None) -> bool:
    """For a server whose worker threads make large temporaries: at most ``arenas`` heaps shared
    by the threads (glibc makes up to 8 per core, each keeping its own freed memory). With
    ``mmap_threshold``, allocations above it get their own mapping, returned when freed (glibc
    otherwise raises the threshold up to 32 MB after large frees); measured here it slows a 24 MP
    segmentation by 20-50 %, so it is off by default and :func:`trim_memory` does that work.
    Returns whether it applied (glibc only)."""
    libc = _glibc()
    if not libc:
        return False
    ok = bool(libc.mallopt(M_ARENA_MAX, int(arenas)))
    if mmap_threshold is not None:
        ok = ok and bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)))
    return ok


class SessionRegistry:
    """Live sessions' views, grouped by page, least recently used page first, within ``budget`` bytes.

    Args:
        budget: bytes all registered views may hold together (the newest page is always kept).
        folder: where sessions keep their files (``folder/<view session id>``), removed with the view.
        ttl: seconds after its last use that a page's views are released (:meth:`sweep`; Gradio keeps
            the state of a closed page for an hour whatever its ``time_to_live``). None: never.
    """

    def __init__(self, budget: int, folder: Path | None = None, ttl: float | None = None, idle: float = 60.0) -> None:
        self.budget = max(0, int(budget))
        self.folder = folder
        self.ttl = ttl
        self.idle = idle  # seconds after which a page's drawing caches are dropped (they are made again on use)
        self._pages: OrderedDict[str, dict[int, weakref.ref[View]]] = OrderedDict()  # a page's views (usually one)
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self.evicted = 0  # pages released for the budget so far
        self.expired = 0  # pages released after their lifetime so far
        self.on_sweep: list[Callable[[], int]] = []  # more clean-up for each sweep (the app's result cache)

    @staticmethod
    def _key(view: View) -> str:
        return view.page or view.session  # a page that segments again replaces its view: still one session

    def register(self, view: View) -> None:
        """Add a new view (its page is the most recently used) and release the least recently used
        pages beyond the budget."""
        key = self._key(view)
        with self._lock:
            self._pages.setdefault(key, {})[id(view)] = weakref.ref(view)
            self._pages.move_to_end(key)
            self._used[key] = time.monotonic()
        if self.folder is not None:  # the view's files go when its state does (lifetime passed, a new photo)
            weakref.finalize(view, shutil.rmtree, self.folder / view.session, True)
        self.enforce()

    def touch(self, view: View) -> None:
        """``view`` was used now (an event of its page)."""
        key = self._key(view)
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                self._used[key] = time.monotonic()

    def _live_pages(self) -> list[tuple[str, list[View]]]:
        with self._lock:
            out = []
            for key in list(self._pages):
                refs = self._pages[key]
                views = []
                for i, ref in list(refs.items()):
                    v = ref()
                    if v is None:
                        del refs[i]
                    elif not v.expired:
                        views.append(v)
                if views:
                    out.append((key, views))
                else:  # every view of the page is gone: forget it
                    del self._pages[key]
                    self._used.pop(key, None)
            return out

    def live(self) -> list[View]:
        """The registered views that hold their state, least recently used page first."""
        return [v for _, views in self._live_pages() for v in views]

    def memory(self) -> int:
        """Bytes the live views hold together (a result shared by several views counted once)."""
        return self._total(self.live())

    @staticmethod
    def _total(views: list[View]) -> int:
        results: dict[int, int] = {}
        own = 0
        for v in views:
            own += v.own_nbytes
            if v.result is not None:
                results[id(v.result)] = v.result.nbytes
        return own + sum(results.values())

    def _release(self, key: str, views: list[View]) -> None:
        for v in views:
            v.release()
            if self.folder is not None:
                shutil.rmtree(self.folder / v.session, ignore_errors=True)
        with self._lock:
            self._pages.pop(key, None)
            self._used.pop(key, None)

    def enforce(self) -> int:
        """Release least recently used pages until the rest fit the budget; returns how many."""
        released, dropped = 0, False
        while True:
            pages = self._live_pages()
            if len(pages) <= 1 or self._total([v for _, vs in pages for v in vs]) <= self.budget:
                return released
            if not dropped:  # first what costs nobody anything: the other pages' drawing caches
                for _, views in pages[:-1]:
                    for v in views:
                        v.drop_caches()
                dropped = True
                continue
            key, views = pages[0]
            self._release(key, views)
            self.evicted += 1
            released += 1
            log.info("session %s released for the memory budget (%d MB)", key[:8], self.budget >> 20)
            trim_memory()

    def sweep(self, now: float | None = None) -> int:
        """Release pages unused for longer than ``ttl`` and drop the drawing caches of pages idle
        for ``idle`` seconds; returns how many pages were released."""
        now = time.monotonic() if now is None else now
        released = 0
        for key, views in self._live_pages():
            unused = now - self._used.get(key, now)
            if unused > self.idle:
                for v in views:
                    v.drop_caches()
            if self.ttl is not None and unused > self.ttl:
                self._release(key, views)
                self.expired += 1
                released += 1
        dropped = sum(hook() for hook in self.on_sweep)
        if released:
            log.info("%d sessions released after their lifetime", released)
        if dropped:
            log.info("%d cached results expired", dropped)
        if released or dropped:
            trim_memory()
        return released

    def start_sweeping(self, every: float) -> threading.Thread:
        """Run :meth:`sweep` every ``every`` seconds in a daemon thread."""
        def loop() -> None:
            while True:
                time.sleep(every)
                try:
                    self.sweep()
                except Exception:  # pragma: no cover - never let the sweeper die
                    log.exception("session sweep failed")

        thread = threading.Thread(target=loop, name="session-sweeper", daemon=True)
        thread.start()
        return thread
