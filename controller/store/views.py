"""Frozen views the repositories return: nothing outside the store sees a row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    id: str
    board: str
    online: bool
    last_seen: float
    agent_version: str
    active_bundle: str | None
    health: str
    tags: tuple[str, ...]
    labels: Mapping[str, Any]
    reported: Mapping[str, Any] | None
    last_sample: Mapping[str, Any] | None
    desired_version: int | None
    desired_target: str | None
    power_budget_w: float | None
    revoked: float | None = None  # when `fleetgen device revoke` revoked it


@dataclass(frozen=True, slots=True)
class Revoked:
    """What `fleetgen device revoke` took the device out of."""

    device_id: str
    groups: tuple[str, ...]  # groups that named it explicitly (rules by board/tag/label skip it)
    rollouts: tuple[int, ...]  # unfinished rollouts it left


@dataclass(frozen=True, slots=True)
class GroupRule:
    kind: str  # device | board | tag | label
    value: str

    def __str__(self) -> str:
        return f"{self.kind}={self.value}"


@dataclass(frozen=True, slots=True)
class GroupView:
    name: str
    rules: tuple[GroupRule, ...]
    members: tuple[str, ...]
    budget_w: float | None


@dataclass(frozen=True, slots=True)
class DesiredView:
    device_id: str
    version: int
    target: str | None
    power_budget_w: float | None


@dataclass(frozen=True, slots=True)
class RolloutDeviceView:
    device_id: str
    wave: int
    result: str
    previous_target: str | None
    director_version: int | None
    directed_at: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class RolloutView:
    id: int
    bundle: str
    group: str
    status: str
    waves_spec: str
    max_failure_ratio: float
    wave_timeout_s: float
    plan: tuple[tuple[str, ...], ...]
    current_wave: int
    wave_started: float | None
    paused_at: float | None
    created: float
    updated: float
    reason: str
    devices: Mapping[str, RolloutDeviceView] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.devices.values():
            out[d.result] = out.get(d.result, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class PowerSettings:
    device_id: str
    priority: float = 1.0
    floor_w: float = 0.0
    cap_w: float | None = None


@dataclass(frozen=True, slots=True)
class PowerMember:
    """One online group member as the allocator needs it."""

    device_id: str
    board: str
    demand_w: float | None
    settings: PowerSettings
    allocated_w: float | None
