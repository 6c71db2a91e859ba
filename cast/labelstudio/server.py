"""The HTTP side of Label Studio's ML backend protocol, as the Label Studio server (1.23) calls it:

- ``GET /health`` (Label Studio waits 1 s) -> ``{"status": "UP", "model_version": ...}``;
- ``POST /setup`` (3 s) ``{"project", "schema", "hostname", "access_token", "extra_params"}`` ->
  ``{"model_version": ...}``; this is what *Connect model* validates, so a labeling config the
  backend cannot serve is refused here;
- ``POST /predict`` (100 s) ``{"tasks", "project", "label_config", "params": {"context", ...}}`` ->
  ``{"results": [one prediction per task, in order]}``; with ``params.context`` it is a smart-tool
  prompt (Label Studio's ``/api/ml/{id}/interactive-annotating`` forwards it here);
- ``POST /webhook`` (training and Label Studio's webhook events) -> ``{"status": "ok"}``: CAST is
  not trained from Label Studio, events are acknowledged and ignored;
- ``GET /versions`` -> ``{"versions": [model_version]}``.

Errors: Label Studio drops an error response's body and shows only the status line
(``"400 Client Error: <reason> for url: ..."``), so every error here is sent with a one-line
*reason phrase* saying what is wrong (and the same text as JSON, for other clients). That is why
this server is Python's own ``http.server``: ASGI servers send only the standard reason phrases.
Nothing ever answers with a traceback. With basic auth configured (Label Studio's *basic auth*
setting for a model), every request without the right credentials gets 401.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .backend import BadRequest, LabelStudioBackend
from .config import UnsupportedConfig

__all__ = ["BackendServer", "make_server"]

log = logging.getLogger("cast.labelstudio")
MAX_BODY = 64 * 2**20  # largest request body (tasks carry their annotations and predictions)


def _reason(text: str) -> str:
    """A status line's reason phrase: one line of printable ASCII."""
    line = " ".join(str(text).split())
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in line)[:400] or "error"


class _Handler(BaseHTTPRequestHandler):
    server: BackendServer
    protocol_version = "HTTP/1.1"
    server_version = "cast-labelstudio-backend"

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any], reason: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status, _reason(reason) if reason else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": message, "status": status}, reason=message, headers=headers)

    def _authorized(self) -> bool:
        expected = self.server.basic_auth
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), f"{expected[0]}:{expected[1]}".encode())

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._error(413 if length > 0 else 400, f"request body must be JSON of at most {MAX_BODY // 2**20} MB")
            self.close_connection = True
            return None
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return None
        return body

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if not self._authorized():
            self._error(401, "this CAST backend requires basic auth (set it in Label Studio's model settings)",
                        headers={"WWW-Authenticate": 'Basic realm="CAST Label Studio backend"'})
            return
        backend = self.server.backend
        routes = {("GET", "/"): self._health, ("GET", "/health"): self._health, ("GET", "/versions"): self._versions,
                  ("POST", "/setup"): backend.setup, ("POST", "/predict"): backend.predict, ("POST", "/webhook"): self._webhook}
        handler = routes.get((method, path))
        if handler is None:
            known = ", ".join(f"{m} {p}" for m, p in routes)
            self._error(405 if any(p == path for _, p in routes) else 404, f"no {method} {path} here; routes: {known}")
            return
        if method == "GET":
            self._send(200, handler())
            return
        body = self._body()
        if body is None:
            return
        try:
            self._send(200, handler(body))
        except (UnsupportedConfig, BadRequest) as e:
            self._error(400, str(e))
        except Exception as e:  # a bug or an unexpected failure: one line to Label Studio, the traceback to the log
            log.exception("%s %s failed", method, path)
            self._error(500, f"CAST backend error: {type(e).__name__}: {e}")

    def _health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "CAST", "model_version": self.server.backend.model_version}

    def _versions(self) -> dict[str, Any]:
        return {"versions": [self.server.backend.model_version], "model_version": self.server.backend.model_version}

    def _webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        action = str(body.get("action", ""))
        if action == "START_TRAINING":
            log.info("Label Studio asked to train; CAST is not trained from Label Studio (see python -m train)")
        return {"status": "ok", "action": action}


class BackendServer(ThreadingHTTPServer):
    """A threaded HTTP server around a :class:`LabelStudioBackend`. ``serve_forever()`` to run,
    ``shutdown()`` from another thread to stop; ``url`` is where Label Studio finds it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, backend: LabelStudioBackend, host: str = "127.0.0.1", port: int = 9090,
                 basic_auth: tuple[str, str] | None = None) -> None:
        super().__init__((host, port), _Handler)
        self.backend, self.basic_auth = backend, basic_auth

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="cast-labelstudio", daemon=True)
        thread.start()
        return thread


def make_server(backend: LabelStudioBackend, host: str = "127.0.0.1", port: int = 9090,
                basic_auth: tuple[str, str] | None = None) -> BackendServer:
    """The server for ``backend`` on ``host:port`` (port 0: a free one), not yet serving."""
    return BackendServer(backend, host, port, basic_auth)
