"""The daemon's state as `GET /fleetgen/status` returns it and `fleetgen-agent status` shows it.

The daemon fills it (agent.daemon.Agent.status_snapshot); fields it does not know yet stay
None. Versioned by `schema`, as every machine output of fleetgen is.
"""

from __future__ import annotations

import msgspec

from agent.api.metrics import ApiCounters

SCHEMA = 1


class ApiStatus(msgspec.Struct, frozen=True, kw_only=True):
    state: str  # ModelHost state: empty, loading, ready, switching, failed
    detail: str
    models: list[str]
    addresses: list[str]
    counters: ApiCounters


class DaemonStatus(msgspec.Struct, frozen=True, kw_only=True):
    schema: int = SCHEMA
    device_id: str
    agent_version: str
    uptime_s: float
    link: str  # "connected" or "disconnected"
    broker: str
    active_bundle: str | None
    previous_bundle: str | None
    update_phase: str  # "idle", or the update worker's phase
    budget_w: float | None
    draw_w: float | None
    power_estimated: bool
    spool_depth: int  # telemetry samples waiting to be sent
    api: ApiStatus | None
