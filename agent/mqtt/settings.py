"""MQTT connection settings, shared by the agent and the controller."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from agent.errors import ConfigError
from agent.mqtt.url import BrokerUrl


class MqttSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    url: str = "mqtt://127.0.0.1:1883"
    # "5" is preferred; "3.1.1" for brokers that speak only that (the demo's embedded one).
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: Annotated[int, Meta(ge=2, le=3600)] = 30
    # How long the broker keeps our session (and queues QoS 1 messages) while we are away.
    session_expiry: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 7 * 24 * 3600
    client_id: Annotated[str, Meta(max_length=128)] | None = None
    username: Annotated[str, Meta(max_length=256)] | None = None
    password: Annotated[str, Meta(max_length=256)] | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    reconnect_min_s: Annotated[float, Meta(gt=0, le=3600)] = 0.5
    reconnect_max_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    # paho's outgoing queue is unbounded by default; bound it (PITFALLS).
    max_queued: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    max_inflight: Annotated[int, Meta(ge=1, le=65535)] = 20

    def broker(self) -> BrokerUrl:
        return BrokerUrl.parse(self.url)

    def check(self) -> MqttSettings:
        """Cross-field checks msgspec cannot express; ConfigError names the key."""
        url = self.broker()
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ConfigError("mqtt.reconnect_min_s: must not exceed mqtt.reconnect_max_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mqtt.cert_file and mqtt.key_file: give both or neither")
        if not url.tls and (self.ca_file or self.cert_file):
            raise ConfigError(f"mqtt.url: {self.url!r} is plain mqtt:// but TLS files are set; use mqtts://")
        return self
