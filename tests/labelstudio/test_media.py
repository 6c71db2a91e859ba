"""Fetching task images within limits: hosts, sizes, time, redirects, local folders, tokens."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cast.labelstudio.media import FetchError, FetchSettings, ImageFetcher, is_personal_access_token

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


class _Files(BaseHTTPRequestHandler):
    """Loopback file server: /img (1 kB), /big (2 MB), /unsized (2 MB, no length), /slow (a byte
    every 0.3 s), /away (a redirect to another host), /auth (needs ``Token secret``)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the limits at work)
            pass

    def _answer(self) -> None:
        if self.path == "/img":
            self._bytes(PNG)
        elif self.path == "/big":
            self._bytes(b"x" * (2 << 20))
        elif self.path == "/unsized":
            self.send_response(200)
            self.end_headers()
            for _ in range(32):
                self.wfile.write(b"x" * 65536)
            self.close_connection = True
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)
        elif self.path == "/away":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/img")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/auth":
            if self.headers.get("Authorization") == "Token secret":
                self._bytes(PNG)
            else:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _bytes(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def files():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def fetcher(files, **kw) -> ImageFetcher:
    base = f"http://127.0.0.1:{files.server_address[1]}"
    return ImageFetcher(FetchSettings(**{"label_studio_url": base, "api_key": "secret", "max_bytes": 1 << 20,
                                         "timeout": 5.0, **kw}))


def test_label_studio_paths_and_urls_are_fetched_with_the_key_only_to_label_studio(files):
    f = fetcher(files)
    base = f.settings.label_studio_url
    assert f.resolve("/data/upload/3/ab12-cat.png") == f"{base}/data/upload/3/ab12-cat.png"
    assert f.resolve("/data/local-files/?d=photos/a.jpg") == f"{base}/data/local-files/?d=photos/a.jpg"
    assert f.fetch(f"{base}/auth") == PNG and f.fetch(f"{base}/img") == PNG
    assert files.seen[-2:] == [("/auth", "Token secret"), ("/img", "Token secret")]
    wrong = fetcher(files, api_key="nope")
    with pytest.raises(FetchError, match=r"/auth: HTTP 401 .*LABEL_STUDIO_API_KEY"):
        wrong.fetch(f"{base}/auth")
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL is not set"):
        ImageFetcher(FetchSettings()).fetch("/data/upload/1/x.png")


def test_other_hosts_only_when_allowed_and_never_with_the_key(files):
    port = files.server_address[1]
    f = fetcher(files)
    away = f"{f.settings.label_studio_url}/away"
    with pytest.raises(FetchError, match=f"host localhost:{port} is not Label Studio's"):
        f.fetch(f"http://localhost:{port}/img")
    with pytest.raises(FetchError, match="not Label Studio's"):  # a redirect elsewhere is checked too
        f.fetch(away)
    allowed = fetcher(files, allowed_hosts=(f"localhost:{port}",))
    assert allowed.fetch(away) == PNG  # redirected to an allowed host
    assert files.seen[-1] == ("/img", None)  # ... without the key


def test_size_and_time_limits(files):
    f = fetcher(files)
    base = f.settings.label_studio_url
    with pytest.raises(FetchError, match="larger than 1 MB"):
        f.fetch(f"{base}/big")
    with pytest.raises(FetchError, match="larger than 1 MB"):
        f.fetch(f"{base}/unsized")
    t = time.monotonic()
    with pytest.raises(FetchError, match="over 1 s|timed out"):
        fetcher(files, timeout=1.0).fetch(f"{base}/slow")
    assert time.monotonic() - t < 20  # the file takes 30 s to send: the limit stopped it
    with pytest.raises(FetchError, match="HTTP 404"):
        f.fetch("/data/upload/1/missing.png")


def test_local_paths_only_inside_the_local_folder(tmp_path, files):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    f = fetcher(files, local_root=tmp_path / "photos")
    assert f.fetch("a.png") == PNG and f.fetch(str(tmp_path / "photos" / "a.png")) == PNG
    assert f.fetch(f"file://{tmp_path}/photos/a.png") == PNG
    for outside in ("../secret.png", str(tmp_path / "secret.png"), "/etc/passwd"):
        with pytest.raises(FetchError, match="outside the local files folder"):
            f.fetch(outside)
    with pytest.raises(FetchError, match="local files are not allowed"):
        fetcher(files).fetch("a.png")


def _jwt(payload: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'HS256'})}.{part(payload)}.signature"


def test_personal_access_tokens_are_told_from_legacy_tokens():
    assert is_personal_access_token(_jwt({"token_type": "refresh", "exp": 9999999999}))
    assert not is_personal_access_token(_jwt({"token_type": "access"}))
    assert not is_personal_access_token("3a0f9b1c2d4e5f60718293a4b5c6d7e8f9012345")  # a legacy token
