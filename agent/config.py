"""The agent's configuration (`/etc/fleetgen/agent.toml`), validated at start.

Example::

    device_id = "kiosk-042"
    state_dir = "/var/lib/fleetgen"

    [mqtt]
    url = "mqtts://fleet.example.com:8883"
    ca_file = "/var/lib/fleetgen/pki/ca.pem"

    [telemetry]
    sample_interval_s = 5
    publish_interval_s = 30

    [labels]                 # reported as they are: the controller's groups select on them
    site = "lisbon"
    rack = 4

Every key can be set from the environment (`FLEETGEN_DEVICE_ID`, `FLEETGEN_MQTT_URL`,
`FLEETGEN_TELEMETRY_SAMPLE_INTERVAL_S`, ...) and the CLI's `--state-dir` wins over both.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from agent.api.settings import ApiSettings
from agent.errors import ConfigError
from agent.mqtt.settings import MqttSettings
from agent.protocol.messages import DeviceId
from agent.settings import load_settings

if TYPE_CHECKING:
    from agent.trust.fetch import DownloadPolicy

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/fleetgen/agent.toml")
DEFAULT_STATE_DIR = "/var/lib/fleetgen"


class TelemetrySettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    sample_interval_s: Annotated[float, Meta(ge=0.1, le=3600)] = 5.0
    publish_interval_s: Annotated[float, Meta(ge=0.1, le=86400)] = 30.0


class BoardSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Root of the sysfs/procfs tree to read (tests and the demo point it at fixtures).
    root: str = "/"
    # A board profile name, or "auto" to detect it.
    profile: Annotated[str, Meta(max_length=64)] = "auto"


class UpdateSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[update]`: conditions and retries of the update lifecycle (agent/update/)."""

    # Device-local maintenance window "HH:MM-HH:MM" (may cross midnight); "" = any time.
    window: Annotated[str, Meta(max_length=11)] = ""
    battery_floor_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    disk_reserve_mb: Annotated[float, Meta(ge=0)] = 256.0
    drain_timeout_s: Annotated[float, Meta(ge=0, le=86400)] = 300.0
    max_retries: Annotated[int, Meta(ge=0, le=100)] = 5
    backoff_base_s: Annotated[float, Meta(ge=0.01, le=3600)] = 10.0
    backoff_max_s: Annotated[float, Meta(ge=0.01, le=86400)] = 900.0
    recheck_s: Annotated[float, Meta(ge=0.01, le=3600)] = 60.0
    max_trial_attempts: Annotated[int, Meta(ge=1, le=20)] = 3
    # One download (agent/trust/fetch.py DownloadPolicy; flow control in mqtt_fetcher.py).
    download_deadline_s: Annotated[float, Meta(gt=0, le=7 * 86400)] = 1800.0
    download_min_bytes_per_s: Annotated[float, Meta(ge=0)] = 4096.0
    download_floor_window_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    download_chunk_bytes: Annotated[int, Meta(ge=1, le=262144)] = 262144
    download_window: Annotated[int, Meta(ge=1, le=32)] = 16
    download_initial_window: Annotated[int, Meta(ge=1, le=32)] = 2
    download_request_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 15.0
    download_max_retries: Annotated[int, Meta(ge=0, le=100)] = 5

    def download_policy(self) -> DownloadPolicy:
        from agent.trust.fetch import DownloadPolicy

        return DownloadPolicy(
            deadline_s=self.download_deadline_s, min_bytes_per_s=self.download_min_bytes_per_s,
            grace_s=self.download_floor_window_s, chunk_size=self.download_chunk_bytes,
            window=self.download_window, initial_window=self.download_initial_window,
            request_timeout_s=self.download_request_timeout_s, max_retries=self.download_max_retries,
        )


class PowerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[power]`: the governor (firmware/). A budget in the signed desired document wins."""

    enabled: bool = True
    budget_w: Annotated[float, Meta(gt=0)] | None = None
    tick_s: Annotated[float, Meta(ge=0.05, le=60)] = 1.0
    window_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0


class SpoolSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[spool]`: the durable outbox of telemetry and events (agent/spool.py)."""

    max_bytes: Annotated[int, Meta(ge=64 * 1024)] = 64 * 1024 * 1024
    batch_samples: Annotated[int, Meta(ge=1, le=1000)] = 500
    max_in_flight: Annotated[int, Meta(ge=1, le=1000)] = 20
    # Seconds to wait for the controller's `stored` confirmation before sending again (the
    # wait doubles per attempt, up to 5 minutes); a broker restart sends everything unconfirmed.
    confirm_timeout_s: Annotated[float, Meta(ge=0.5, le=3600)] = 10.0


# `[labels]`: operator-set facts (site, rack, ...) the device reports in `reported.labels`,
# which `fleetgen group add NAME --label KEY=VALUE` selects on. Keys cannot hold "=" (the rule
# splits there); values are short scalars, as the protocol's Details bound them.
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LabelValue = Annotated[str, Meta(max_length=256)] | int | float | bool
Labels = Annotated[dict[str, LabelValue], Meta(max_length=64)]


def check_labels(labels: dict[str, LabelValue]) -> None:
    for key in labels:
        if not _LABEL_KEY.fullmatch(key):
            raise ConfigError(f"labels: key {key!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}} (no '=')")


class AgentConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    device_id: DeviceId
    state_dir: str = DEFAULT_STATE_DIR
    mqtt: MqttSettings = MqttSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    board: BoardSettings = BoardSettings()
    update: UpdateSettings = UpdateSettings()
    power: PowerConfig = PowerConfig()
    spool: SpoolSettings = SpoolSettings()
    api: ApiSettings = ApiSettings()  # the local API (agent/api)
    labels: Labels = {}

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def _check(config: AgentConfig) -> None:
    config.mqtt.check()
    check_labels(config.labels)


def load_config(
    path: Path | None = None, *, env: dict[str, str] | None = None, **overrides: Any
) -> AgentConfig:
    """Load and check the agent config; ConfigError (exit 2) names the key on failure."""
    try:
        config = load_settings(
            AgentConfig, path, default_path=DEFAULT_CONFIG, env=env, overrides=overrides,
            check=_check,
        )
    except ConfigError as e:
        if "device_id" in str(e) and "missing required field" in str(e).lower():
            raise ConfigError(
                "device_id: required; set it in agent.toml or FLEETGEN_DEVICE_ID"
            ) from None
        raise
    return config



@dataclass(frozen=True)
class LocalSettings:
    """What a one-shot command (generate, install-bundle, provision) takes from the agent config."""

    state_dir: Path
    board: BoardSettings
    power: PowerConfig = field(default_factory=PowerConfig)  # the governor generation runs under

    @property
    def forced_profile(self) -> str | None:
        return None if self.board.profile == "auto" else self.board.profile


def local_settings(config_path: str | None, state_dir: str | None) -> LocalSettings:
    """`--state-dir`, else the config's (the given file, or /etc/fleetgen/agent.toml when it
    exists), else the default. A broken default config is skipped with a warning, so that an
    offline install still works; a broken `--config` is an error."""
    config = None
    if config_path is not None or DEFAULT_CONFIG.is_file():
        try:
            # The device id plays no part here; a placeholder lets a partial config load.
            config = load_config(Path(config_path) if config_path else None, device_id="local")
        except ConfigError as e:
            if config_path is not None:
                raise
            log.warning("ignoring %s: %s", DEFAULT_CONFIG, e)
    base = config.state_path if config else Path(DEFAULT_STATE_DIR)
    return LocalSettings(Path(state_dir) if state_dir else base, config.board if config else BoardSettings(),
                         config.power if config else PowerConfig())
