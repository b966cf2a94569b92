"""A minimal HTTP client for the agent's Unix socket (what `fleetgen-agent status` uses)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

from agent.errors import FleetgenError


class ApiUnreachable(FleetgenError):
    """No agent answers on the socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(socket_path: Path, path: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `path` over the socket; (status, body)."""
    conn = _UnixConnection(Path(socket_path), timeout)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except FileNotFoundError:
        raise ApiUnreachable(f"no agent socket at {socket_path} (is the agent running?)") from None
    except ConnectionRefusedError:
        raise ApiUnreachable(f"nothing listens on {socket_path} (the agent is not running)") from None
    except PermissionError:
        raise ApiUnreachable(f"{socket_path}: permission denied (are you in the fleetgen group?)") from None
    except (OSError, http.client.HTTPException) as e:
        raise ApiUnreachable(f"{socket_path}: {e}") from None
    finally:
        conn.close()
