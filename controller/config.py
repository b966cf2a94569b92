"""The controller's configuration (`/etc/fleetgen/controller.toml`), same loader as the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from agent.mqtt.settings import MqttSettings
from agent.settings import load_settings

DEFAULT_CONFIG = Path("/etc/fleetgen/controller.toml")


class ControllerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state_dir: str = "/var/lib/fleetgen-controller"
    # SQLAlchemy URL; default: a SQLite file in state_dir. PostgreSQL for replicas.
    database_url: str | None = None
    mqtt: MqttSettings = MqttSettings()
    # MQTT 5 shared subscriptions for telemetry and events, so replicas split the load.
    shared_subscriptions: bool = True

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.state_dir) / 'controller.db'}"


def load_config(path: Path | None = None, *, env: dict[str, str] | None = None, **overrides: Any) -> ControllerConfig:
    config = load_settings(ControllerConfig, path, default_path=DEFAULT_CONFIG, env=env, overrides=overrides)
    config.mqtt.check()
    return config
