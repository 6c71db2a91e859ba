"""Images as Label Studio gives them, fetched within limits.

A task's image is one of:

- a Label Studio path, ``/data/upload/<project>/<file>`` (uploaded files) or
  ``/data/local-files/?d=<path>`` (local storage): fetched from ``LABEL_STUDIO_URL`` with
  ``LABEL_STUDIO_API_KEY``, which is either a legacy token (sent as ``Authorization: Token <key>``)
  or a personal access token (a JWT refresh token: exchanged at ``POST /api/token/refresh/`` for an
  access token, sent as ``Authorization: Bearer <access>`` and renewed before it expires);
- an ``http(s)://`` URL: fetched when its host is Label Studio's or one of ``allowed_hosts``
  (the key is only ever sent to Label Studio; a redirect elsewhere is refused);
- a local path (or ``file://`` URL): read when it lies inside ``local_root``.

Every fetch is limited in size (``max_bytes``) and time (``timeout`` seconds in all); any failure
is a :class:`FetchError` with a one-line message naming the image.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FetchError", "FetchSettings", "ImageFetcher", "is_personal_access_token"]

CHUNK = 1 << 16
REFRESH_MARGIN_S = 30.0  # renew an access token this long before it expires


class FetchError(RuntimeError):
    """An image that could not be fetched; the message is one line and names it."""


@dataclass(frozen=True)
class FetchSettings:
    """Where images may come from, and the limits."""

    label_studio_url: str | None = None  # LABEL_STUDIO_URL, e.g. http://127.0.0.1:8080
    api_key: str | None = None  # LABEL_STUDIO_API_KEY: a legacy token or a personal access token
    allowed_hosts: tuple[str, ...] = ()  # other hosts (host or host:port) http(s) images may come from
    local_root: Path | None = None  # local paths are read only inside this folder (None: refused)
    max_bytes: int = 50 * 2**20  # largest image file accepted
    timeout: float = 30.0  # seconds for one image, connection to last byte

    def __post_init__(self) -> None:
        if self.local_root is not None and not isinstance(self.local_root, Path):
            object.__setattr__(self, "local_root", Path(self.local_root))
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))


def _jwt_payload(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_personal_access_token(key: str) -> bool:
    """Whether a Label Studio API key is a personal access token (a JWT refresh token) rather than
    a legacy token."""
    payload = _jwt_payload(key)
    return payload is not None and payload.get("token_type") == "refresh"


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{(parts.hostname or '').lower()}:{parts.port or default}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # redirects are followed by ImageFetcher itself, each hop checked


class ImageFetcher:
    """Fetches task images (see the module docstring); safe to share between threads."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self._ls_host = _host(settings.label_studio_url) if settings.label_studio_url else None
        self._allowed = {self._ls_host} if self._ls_host else set()
        for h in settings.allowed_hosts:
            self._allowed.add(_host(h if "://" in h else f"http://{h}"))
            if "://" not in h and ":" not in h:  # a bare host name allows https too
                self._allowed.add(_host(f"https://{h}"))
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None  # access token, expiry (epoch seconds)

    # -- resolving ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """The URL or local path a task's image value names."""
        ref = ref.strip()
        if ref.startswith(("http://", "https://")):
            return ref
        if ref.startswith("/data/") or ref.startswith("/storage-data/"):
            if not self.settings.label_studio_url:
                raise FetchError(f"{ref}: a Label Studio path, but LABEL_STUDIO_URL is not set")
            return self.settings.label_studio_url.rstrip("/") + ref
        if ref.startswith("file://"):
            return urllib.parse.unquote(urllib.parse.urlsplit(ref).path)
        return ref

    def fetch(self, ref: str) -> bytes:
        """The bytes of a task's image.

        Raises:
            FetchError: not allowed, not found, too large, too slow, or refused by the server.
        """
        where = self.resolve(ref)
        if where.startswith(("http://", "https://")):
            return self._fetch_url(ref, where)
        return self._read_local(ref, Path(where))

    # -- local files -------------------------------------------------------------------------
    def _read_local(self, ref: str, path: Path) -> bytes:
        root = self.settings.local_root
        if root is None:
            raise FetchError(f"{ref}: a local path, and local files are not allowed (start the backend with --local-files DIR)")
        full = (root / path).resolve() if not path.is_absolute() else path.resolve()
        if not full.is_relative_to(root.resolve()):
            raise FetchError(f"{ref}: outside the local files folder {root}")
        if not full.is_file():
            raise FetchError(f"{ref}: no such file")
        if full.stat().st_size > self.settings.max_bytes:
            raise FetchError(f"{ref}: larger than {self.settings.max_bytes // 2**20} MB")
        return full.read_bytes()

    # -- http --------------------------------------------------------------------------------
    def _fetch_url(self, ref: str, url: str) -> bytes:
        deadline = time.monotonic() + self.settings.timeout
        for _ in range(5):  # redirects, each hop checked
            host = _host(url)
            if host not in self._allowed:
                raise FetchError(f"{ref}: host {host} is not Label Studio's and not an allowed host (--allow-hosts)")
            to_ls = host == self._ls_host
            try:
                return self._get(url, deadline, to_ls)
            except urllib.error.HTTPError as e:
                if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                    url = urllib.parse.urljoin(url, e.headers["Location"])
                    continue
                if e.code == 401 and to_ls and self._access is not None:  # an access token that just expired
                    self._access = None
                    try:
                        return self._get(url, deadline, to_ls)
                    except urllib.error.HTTPError as again:
                        e = again
                hint = " (check LABEL_STUDIO_API_KEY)" if e.code in (401, 403) and to_ls else ""
                raise FetchError(f"{ref}: HTTP {e.code} {e.reason}{hint}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise FetchError(f"{ref}: cannot be fetched ({reason})") from None
        raise FetchError(f"{ref}: too many redirects")

    def _get(self, url: str, deadline: float, to_ls: bool) -> bytes:
        headers = {"User-Agent": "cast-explorer-labelstudio-backend"}
        if to_ls and self.settings.api_key:
            headers["Authorization"] = self._authorization(deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"over {self.settings.timeout:g} s")
        with self._opener.open(urllib.request.Request(url, headers=headers), timeout=left) as resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > self.settings.max_bytes:
                raise OSError(f"larger than {self.settings.max_bytes // 2**20} MB")
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"over {self.settings.timeout:g} s")
                chunk = resp.read1(CHUNK)  # what has arrived: the deadline is checked between reads
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > self.settings.max_bytes:
                    raise OSError(f"larger than {self.settings.max_bytes // 2**20} MB")
                chunks.append(chunk)

    def _authorization(self, deadline: float) -> str:
        key = str(self.settings.api_key)
        if not is_personal_access_token(key):
            return f"Token {key}"
        with self._lock:
            if self._access is None or time.monotonic() > self._access[1]:
                self._access = self._refresh(key, deadline)
            return f"Bearer {self._access[0]}"

    def _refresh(self, key: str, deadline: float) -> tuple[str, float]:
        """Exchange the personal access token for an access token (Label Studio's ``/api/token/refresh/``)."""
        url = str(self.settings.label_studio_url).rstrip("/") + "/api/token/refresh/"
        req = urllib.request.Request(url, data=json.dumps({"refresh": key}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=max(deadline - time.monotonic(), 0.1)) as resp:
                access = str(json.loads(resp.read(1 << 20))["access"])
        except urllib.error.HTTPError as e:
            raise OSError(f"the personal access token was refused at /api/token/refresh/ (HTTP {e.code})") from None
        except (KeyError, ValueError) as e:
            raise OSError(f"unexpected answer from /api/token/refresh/ ({e})") from None
        payload = _jwt_payload(access) or {}
        lifetime = float(payload.get("exp", time.time() + 300)) - time.time()
        return access, time.monotonic() + max(lifetime - REFRESH_MARGIN_S, 1.0)
