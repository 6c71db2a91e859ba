"""Hugging Face Hub access: downloads through huggingface_hub's cache, with errors that say what to do.

``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` are honoured (huggingface_hub reads them). Every failure
becomes a :class:`~cast.errors.WeightsNotAvailableError` whose message names the file and the way out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .errors import WeightsNotAvailableError

__all__ = ["download", "snapshot", "offline"]


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0][:300] if msg.strip() else "unknown error"


def download(repo_id: str, filename: str, revision: str | None = None, cache_dir: Any = None, **kwargs: Any) -> str:
    """Local path of ``repo_id/filename`` (from the cache, or downloaded into it).

    Raises:
        WeightsNotAvailableError: not cached while offline or unreachable, no such repo, revision
            or file, or the download failed.
    """
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, **kwargs)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub could not be reached"
        raise WeightsNotAvailableError(
            f"{repo_id}/{filename} is not in the local Hub cache and {why}. Download it once with "
            f"network access (e.g. `hf download {repo_id} {filename}`), or use the bundled model "
            f"(`cast.load_model('bundled')`).",
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
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None
