"""Hugging Face Hub access: downloads through huggingface_hub's cache, with errors that say what to do.

``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` are honoured (huggingface_hub reads them).
Every failure becomes a :class:`~cast.errors.WeightsNotAvailableError` whose message names the file
and the way out.

A Hub that cannot be reached is found out once, quickly: one short request (``CAST_HUB_TIMEOUT``
seconds, default 3) instead of huggingface_hub's retry ladder of about half a minute, and the
answer is remembered for ``CAST_HUB_RECHECK`` seconds (default 300). While the Hub is unreachable,
files already in the cache are used and others fail at once with the same message everywhere.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_session, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import WeightsNotAvailableError

__all__ = ["download", "download_files", "snapshot", "offline", "reachable", "is_cached", "progress_bars"]

_progress: ContextVar[Any] = ContextVar("cast_hub_progress", default=None)  # tqdm class for downloads
_reach_lock = threading.Lock()
_reach: dict[str, tuple[float, bool, str]] = {}  # endpoint -> (checked at, reachable, why not)


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable() -> tuple[bool, str]:
    """``(True, "")`` when the Hub answers, else ``(False, why)``: one short request per endpoint,
    remembered for ``CAST_HUB_RECHECK`` seconds (any HTTP answer counts as reachable)."""
    if offline():
        return False, "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    recheck = float(os.environ.get("CAST_HUB_RECHECK", 300))
    with _reach_lock:
        hit = _reach.get(endpoint)
        if hit is not None and time.monotonic() - hit[0] < recheck:
            return hit[1], hit[2]
        try:
            get_session().head(f"{endpoint}/api/models/{HUB_PROBE_REPO}", timeout=float(os.environ.get("CAST_HUB_TIMEOUT", 3)))
            result = (True, "")
        except Exception as e:  # connection refused, DNS failure, timeout, TLS error
            result = (False, f"the Hub ({endpoint}) could not be reached: {type(e).__name__}")
        _reach[endpoint] = (time.monotonic(), *result)
        return result


def mark_unreachable(why: str) -> None:
    """Remember that a transfer just failed for want of a connection."""
    with _reach_lock:
        _reach[constants.ENDPOINT] = (time.monotonic(), False, why)


def is_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether ``repo_id/filename`` is in the local Hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)


HUB_PROBE_REPO = "twke/CAST"


@contextlib.contextmanager
def progress_bars(tqdm_class: Any) -> Iterator[None]:
    """Report the downloads started in this context (this thread) through ``tqdm_class``
    (a ``tqdm`` subclass; huggingface_hub's default bars otherwise)."""
    token = _progress.set(tqdm_class)
    try:
        yield
    finally:
        _progress.reset(token)


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:300] if msg.strip() else "unknown error"


def download(repo_id: str, filename: str, revision: str | None = None, cache_dir: Any = None, **kwargs: Any) -> str:
    """Local path of ``repo_id/filename`` (from the cache, or downloaded into it).

    Raises:
        WeightsNotAvailableError: not cached while offline or unreachable, no such repo, revision
            or file, or the download failed.
    """
    bars = {"tqdm_class": _progress.get()} if _progress.get() is not None else {}
    return _friendly(repo_id, filename, revision, lambda local: hf_hub_download(
        repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, local_files_only=local,
        **bars, **kwargs))


def download_files(repo_id: str, patterns: list[str], revision: str | None = None, cache_dir: Any = None) -> Path:
    """Local snapshot folder of the files of ``repo_id`` matching ``patterns`` (errors as :func:`download`)."""
    what = ", ".join(patterns)
    return Path(_friendly(repo_id, what, revision, lambda local: snapshot_download(
        repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=local)))


def _friendly(repo_id: str, filename: str, revision: str | None, fetch: Any) -> str:
    """``fetch(local_only)`` with the reachability check in front and every failure explained."""
    ok, why_not = reachable()
    try:
        return fetch(not ok)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub could not be reached"
        if not offline() and ok:  # reachable a moment ago: the transfer itself failed
            mark_unreachable(why)
        raise WeightsNotAvailableError(
            f"{repo_id}/{filename} is not in the local Hub cache and {why}. Download it once with "
            f"network access (e.g. `hf download {repo_id} {filename}`), or use the bundled model "
            f"(`cast.load_model('bundled')`)." + (f" ({why_not})" if why_not and why_not != why else ""),
            short=f"not in the local Hub cache and {why}",
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise WeightsNotAvailableError(f"{repo_id}/{filename} (revision {revision or 'main'}): {_first_line(str(e))}",
                                       short="no such file on the Hub") from None
    except HfHubHTTPError as e:
        raise WeightsNotAvailableError(f"download of {repo_id}/{filename} failed: {_first_line(str(e))}",
                                       short="the download failed") from None


def snapshot(repo_id: str, patterns: list[str], revision: str | None = None) -> Path | None:
    """Local folder with the files of ``repo_id`` matching ``patterns``; None when they cannot be had."""
    try:
        local = not reachable()[0]
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None
