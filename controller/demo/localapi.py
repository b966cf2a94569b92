"""A client of the agent's local API on its Unix socket (what `curl --unix-socket` does),
with the standard library only, so the demo needs nothing the controller extra lacks."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from agent.errors import FleetgenError


class LocalApiError(FleetgenError):
    """The local API answered with an error, or not at all."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def request(path: Path, method: str, url: str, body: dict[str, Any] | None = None,
            timeout: float = 60.0) -> tuple[int, Any]:
    conn = _UnixConnection(path, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, url, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as e:
        raise LocalApiError(f"{path}: {method} {url}: {e}") from e
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError as e:
        raise LocalApiError(f"{path}: {method} {url}: not JSON ({raw[:80]!r})") from e


def get(path: Path, url: str) -> Any:
    status, doc = request(path, "GET", url)
    if status != 200:
        raise LocalApiError(f"{path}: GET {url}: {status} {doc}")
    return doc


def post(path: Path, url: str, body: dict[str, Any]) -> Any:
    status, doc = request(path, "POST", url, body)
    if status != 200:
        raise LocalApiError(f"{path}: POST {url}: {status} {doc}")
    return doc


def ready(path: Path) -> bool:
    """/health answers 200 once a model is loaded (503 while loading or switching)."""
    if not path.exists():
        return False
    try:
        return request(path, "GET", "/health", timeout=5)[0] == 200
    except LocalApiError:
        return False


def openai_snippet(sock: str, model: str) -> str:
    """The official client on the socket (its HTTP library is httpx, renamed httpx2 lately)."""
    import importlib.util

    httpx = "httpx2" if importlib.util.find_spec("httpx2") else "httpx"
    return "\n".join([
        f"import {httpx} as httpx, openai",
        'client = openai.OpenAI(base_url="http://localhost/v1", api_key="unused", http_client=httpx.Client(',
        f'    transport=httpx.HTTPTransport(uds="{sock}")))',
        f'print(client.completions.create(model="{model}", prompt="It was", max_tokens=24).choices[0].text)',
    ])
