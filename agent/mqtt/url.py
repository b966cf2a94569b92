"""Broker URLs: `mqtt://host:port` (plain) and `mqtts://host:port` (TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str, key: str = "mqtt.url") -> BrokerUrl:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ConfigError(f"{key}: {url!r} is not a valid URL ({e})") from None
        if parts.scheme not in _DEFAULT_PORTS:
            raise ConfigError(f"{key}: {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"{key}: {url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"{key}: {url!r}: a broker URL has no path, query or fragment")
        if parts.username or parts.password:
            raise ConfigError(f"{key}: {url!r}: put credentials in mqtt.username/password, not the URL")
        return cls(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
