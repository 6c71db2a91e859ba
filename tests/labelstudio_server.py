"""A real Label Studio server for the integration checks: started from its own virtualenv (it pins
its own opencv and numpy, so it never shares the project's Python), bound to 127.0.0.1 with a
temporary data folder, and its REST API.

The virtualenv is ``.venv-labelstudio`` in the checkout (``setup.sh`` makes it) or the one
``CAST_LABEL_STUDIO_PYTHON`` names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # the only address these helpers talk to
VERSION = "1.23.2"  # the Label Studio version the integrations are checked against
USERNAME, PASSWORD = "cast-check@example.com", "cast-check-password"


def ls_python() -> Path:
    """The Python of the Label Studio virtualenv."""
    return Path(os.environ.get("CAST_LABEL_STUDIO_PYTHON", ROOT / ".venv-labelstudio" / "bin" / "python"))


def missing_message(python: Path) -> str:
    return (f"{python}: no Label Studio beside it. Run ./setup.sh, or: python -m venv .venv-labelstudio && "
            f".venv-labelstudio/bin/pip install label-studio=={VERSION}")


def start_server(python: Path, data_dir: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    """``label-studio start`` on 127.0.0.1 with a user whose legacy API token is ``token`` (1.23
    has legacy tokens off unless the organization is made with ``--enable-legacy-api-token``), and
    ML backends on 127.0.0.1 allowed (Label Studio refuses local addresses by default)."""
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "COLLECT_ANALYTICS": "false",
           "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
           "FEATURE_FLAGS_OFFLINE": "true", "DJANGO_DB": "sqlite", "HOME": str(data_dir),
           "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
    env.pop("PYTHONPATH", None)
    cmd = [str(python.parent / "label-studio"), "start", "--no-browser", "--internal-host", HOST, "--port", str(port),
           "--data-dir", str(data_dir), "--username", USERNAME, "--password", PASSWORD, "--user-token", token,
           "--enable-legacy-api-token", "--log-level", "WARNING"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``/health`` answers; raises when the server exits or the time is up."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"Label Studio not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Api:
    """Label Studio's REST API on 127.0.0.1 with token auth."""

    def __init__(self, base: str, token: str) -> None:
        assert base.startswith(f"http://{HOST}:"), base
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 300) -> tuple[int, Any]:
        """``(status, decoded JSON or text)``; HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        return _send(req, timeout)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {str(out)[:2000]}")
        return out

    def upload(self, project: int, files: list[Path]) -> list[int]:
        """Import image files into a project (they become ``/data/upload/...`` tasks); their task ids."""
        boundary = uuid.uuid4().hex
        parts = []
        for i, f in enumerate(files):  # one field name per file: Label Studio reads one file per field
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"{f.name}\"\r\n"
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + f.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(f"{self.base}/api/projects/{project}/import?return_task_ids=true", data=body,
                                     method="POST", headers={"Authorization": f"Token {self.token}",
                                                             "Content-Type": f"multipart/form-data; boundary={boundary}"})
        status, out = _send(req, 300)
        if status >= 300:
            raise RuntimeError(f"upload: HTTP {status}: {str(out)[:2000]}")
        return list(out["task_ids"])


def _send(req: urllib.request.Request, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")[:2000]
