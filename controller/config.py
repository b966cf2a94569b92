"""The controller's configuration (`/etc/fleetgen/controller.toml`), same loader as the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agent.mqtt.settings import MqttSettings
from agent.settings import load_settings
from controller.web.settings import HttpSettings

DEFAULT_CONFIG = Path("/etc/fleetgen/controller.toml")


class EnrollSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Device enrollment (controller.enroll, docs/install.md)."""

    # HOST:PORT of the HTTPS enrollment endpoint `serve` runs; unset: no endpoint.
    listen: str | None = None
    # The broker URL enrolled devices are given (mqtts://fleet.example.com:8883).
    broker_url: str | None = None
    # The device CA and the controller's identities (`fleetgen ca init`); default STATE/pki.
    pki_dir: str | None = None
    cert_days: Annotated[int, Meta(ge=1, le=3650)] = 365


class ControllerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state_dir: str = "/var/lib/fleetgen-controller"
    # SQLAlchemy URL; default: a SQLite file in state_dir. PostgreSQL for replicas.
    database_url: str | None = None
    mqtt: MqttSettings = MqttSettings()
    # MQTT 5 shared subscriptions for telemetry, events and requests, so replicas split the load.
    shared_subscriptions: bool = True
    # The TUF image repository (`fleetgen keys init --repo DIR`). When set, `serve` answers the
    # agents' metadata and bundle requests from it and keeps timestamp/snapshot signed.
    repository: str | None = None
    resign_interval_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    # Fleet operations (leader only): how often rollouts advance and power is re-shared.
    rollout_tick_s: Annotated[float, Meta(gt=0, le=60)] = 0.5
    power_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 5.0
    # Telemetry retention: raw samples for raw_days, then 5-minute means until keep_days.
    telemetry_raw_days: Annotated[float, Meta(gt=0)] = 7.0
    telemetry_keep_days: Annotated[float, Meta(gt=0)] = 90.0
    telemetry_bucket_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    # The web face (REST API, dashboard, /metrics); off unless `listen` or `serve --http` is given.
    http: HttpSettings = HttpSettings()
    enroll: EnrollSettings = EnrollSettings()

    @property
    def pki_path(self) -> Path:
        return Path(self.enroll.pki_dir) if self.enroll.pki_dir else Path(self.state_dir) / "pki"

    @property
    def shared(self) -> bool:
        return self.shared_subscriptions and self.mqtt.protocol == "5"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.state_dir) / 'controller.db'}"


def load_config(path: Path | None = None, *, env: dict[str, str] | None = None, **overrides: Any) -> ControllerConfig:
    return load_settings(ControllerConfig, path, default_path=DEFAULT_CONFIG, env=env, overrides=overrides,
                         check=lambda c: c.mqtt.check())
