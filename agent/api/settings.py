"""`[api]` in agent.toml: where the local API listens and its limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from agent.errors import ConfigError

DEFAULT_SOCKET = "/run/fleetgen/agent.sock"


class ApiSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    socket: str = DEFAULT_SOCKET
    socket_mode: Annotated[int, Meta(ge=0, le=0o777)] = 0o660  # the fleetgen group may use the API
    # "127.0.0.1:8080" adds a TCP listener (port 0: any free port); unset: the socket only
    listen: str | None = None
    api_key_file: str | None = None  # set: every route but /health needs Authorization: Bearer KEY
    metrics: bool = False  # GET /metrics (Prometheus text)
    max_pending: Annotated[int, Meta(ge=1, le=1024)] = 8  # waiting requests per model, then 429
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 2**20)] = 2**20
    max_connections: Annotated[int, Meta(ge=1, le=4096)] = 64
    header_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    write_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 30.0
    switch_wait_s: Annotated[float, Meta(ge=0, le=600)] = 10.0  # new requests wait this long at a bundle switch
    drain_s: Annotated[float, Meta(ge=0, le=60)] = 8.0  # at stop, in-flight requests get this long
    # a stream sends at most one chunk per interval (the first token at once): tokens that
    # come faster share a chunk. 0 sends every token as it comes (ADR 0061)
    stream_interval_ms: Annotated[float, Meta(ge=0, le=1000)] = 20.0

    def tcp_address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
            raise ConfigError(f"api.listen: expected HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)


def read_api_key(path: str | Path) -> str:
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"API key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"API key file {path} is not readable ({e})") from None
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"API key file {path} must hold one key (no spaces), got {len(key)} characters")
    return key
