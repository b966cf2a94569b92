"""`[http]` in the controller config: where the web face listens and who may read."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from agent.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"


class HttpSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # HOST:PORT; unset means no web face (`fleetgen serve --http` turns it on at DEFAULT_LISTEN).
    listen: str | None = None
    # Reads (GET) without a token from the controller's own machine; from anywhere else, and for
    # every write, an API token (`fleetgen token create NAME`).
    open_reads_on_localhost: bool = True
    max_body_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024


def parse_listen(value: str, key: str = "http.listen") -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
