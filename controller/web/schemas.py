"""The REST API's wire models (pydantic: they validate input and write the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.store.views import DeviceDetail, RolloutView
from controller.web.queries import DeviceSummary, DeviceTwin, EventView, Series


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(Out):
    error: str = Field(description="one line naming what was wrong (the field, the id)")
    detail: list[dict[str, Any]] | None = Field(None, description="validation errors, one per field")


class DeviceSummaryOut(Out):
    id: str
    board: str
    status: Literal["online", "offline"]
    last_seen: float = Field(description="Unix time the controller last heard from the device")
    agent_version: str
    active_bundle: str | None
    health: str = Field(description="ok, degraded, failed or unknown")
    power_w: float | None = Field(description="measured (or estimated) draw in the last sample")
    budget_w: float | None = Field(description="power budget in force, as the device reports it")
    tokens_per_s: float | None
    temp_c: float | None

    @classmethod
    def of(cls, d: DeviceSummary) -> DeviceSummaryOut:
        return cls(id=d.id, board=d.board, status="online" if d.online else "offline", last_seen=d.last_seen,
                   agent_version=d.agent_version, active_bundle=d.active_bundle, health=d.health,
                   power_w=d.power_w, budget_w=d.budget_w, tokens_per_s=d.tokens_per_s, temp_c=d.temp_c)


class DeviceListOut(Out):
    total: int = Field(description="devices matching the filters (all pages)")
    limit: int
    offset: int
    devices: list[DeviceSummaryOut]


class DesiredOut(Out):
    applied_version: int = Field(description="version of the last director document the device applied")
    version: int | None = Field(description="version of the last document the controller signed for it; "
                                            "null: never directed")
    target: str | None = Field(description="the bundle the controller wants it to run (TUF target path)")
    power_budget_w: float | None = Field(description="its power budget: allocated from its group's, or set")


class DeviceOut(Out):
    device: DeviceSummaryOut
    first_seen: float
    status_ts: float
    slot: str | None
    tags: list[str] = Field(description="set by operators (`fleetgen device tag`)")
    labels: dict[str, str | int | float | bool | None] = Field(description="reported by the device")
    reported: dict[str, Any] | None = Field(description="the device's last `reported` document")
    desired: DesiredOut
    last_sample: dict[str, Any] | None = Field(description="the newest telemetry sample")

    @classmethod
    def of(cls, d: DeviceTwin, fleet: DeviceDetail) -> DeviceOut:
        desired = DesiredOut(applied_version=d.desired_version, version=fleet.desired_version,
                             target=fleet.desired_target, power_budget_w=fleet.power_budget_w)
        return cls(device=DeviceSummaryOut.of(d.summary), first_seen=d.first_seen, status_ts=d.status_ts,
                   slot=d.slot, tags=list(fleet.tags), labels=dict(fleet.labels), reported=d.reported,
                   desired=desired, last_sample=d.last_sample)


class SeriesOut(Out):
    device_id: str
    since: float
    until: float
    step: float | None = Field(description="seconds per point (averages); null: raw samples")
    t: list[float] = Field(description="start of each point, Unix time")
    series: dict[str, list[float | None]] = Field(description="field name -> one value per point")
    truncated: bool = Field(description="the range held more points than one answer carries (10,000): "
                                        "these are the oldest; ask again from the last `t`, or give a step")

    @classmethod
    def of(cls, device_id: str, s: Series) -> SeriesOut:
        return cls(device_id=device_id, since=s.since, until=s.until, step=s.step, t=s.t, series=s.values,
                   truncated=s.truncated)


class EventOut(Out):
    device_id: str
    seq: int
    ts: float
    kind: str
    level: str
    message: str
    details: dict[str, str | int | float | bool | None]

    @classmethod
    def of(cls, e: EventView) -> EventOut:
        return cls(device_id=e.device_id, seq=e.seq, ts=e.ts, kind=e.kind, level=e.level, message=e.message,
                   details=e.details)


class EventListOut(Out):
    events: list[EventOut]


class BundleOut(Out):
    path: str = Field(description="TUF target path (the file name)")
    name: str
    version: str
    length: int
    sha256: str
    boards: list[str]


class BundleListOut(Out):
    bundles: list[BundleOut]


class DesiredIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(None, min_length=1, max_length=512,
                               description="a published bundle (TUF target path); null: none; "
                                           "omitted: keep the one it has")
    power_budget_w: float | None = Field(None, ge=0, le=100_000,
                                         description="watts; null: none; omitted: keep the one it has")


class DesiredSetOut(Out):
    device_id: str
    version: int
    target: str | None
    power_budget_w: float | None


class GroupOut(Out):
    name: str
    rules: list[str] = Field(description="selectors: device=ID, board=B, tag=T, label=K=V")
    members: list[str]
    budget_w: float | None


class GroupListOut(Out):
    groups: list[GroupOut]


class MemberPowerOut(Out):
    device_id: str
    board: str
    online: bool
    allocated_w: float | None = Field(description="its share of the group's budget, as last pushed")
    draw_w: float | None = Field(description="recent measured draw (moving average of its samples)")
    priority: float
    floor_w: float
    cap_w: float | None


class GroupPowerOut(Out):
    name: str
    budget_w: float | None
    allocated_w: float
    draw_w: float
    devices: list[MemberPowerOut]


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_w: float | None = Field(description="watts shared among the group's online devices; null: none",
                                   ge=0, le=10_000_000)


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, max_length=512, description="a published target, e.g. tiny-2.0.0.fgb")
    group: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    waves: str = Field("1,10%,50%,100%", max_length=256, description="cumulative wave sizes")
    max_failures: str = Field("5%", max_length=16, description="failure share of a wave that halts it")
    wave_timeout_s: float = Field(600, gt=0, le=7 * 86400, description="a device silent this long has failed")


class RolloutDeviceOut(Out):
    device_id: str
    result: str = Field(description="waiting, pending, committed, failed, timed_out, rolled_back or revoked")
    detail: str
    director_version: int | None
    previous_target: str | None


class WaveOut(Out):
    index: int
    size: int
    state: Literal["waiting", "running", "done"]
    counts: dict[str, int]
    devices: list[RolloutDeviceOut]


class RolloutSummaryOut(Out):
    id: int
    bundle: str
    group: str
    status: str = Field(description="running, paused, aborting, completed, halted or aborted")
    reason: str
    current_wave: int = Field(description="index of the wave in progress (0-based)")
    wave_count: int
    counts: dict[str, int] = Field(description="devices by result")
    created: float
    updated: float

    @classmethod
    def of(cls, v: RolloutView) -> RolloutSummaryOut:
        return cls(id=v.id, bundle=v.bundle, group=v.group, status=v.status, reason=v.reason,
                   current_wave=v.current_wave, wave_count=len(v.plan), counts=v.counts(), created=v.created,
                   updated=v.updated)


class RolloutListOut(Out):
    rollouts: list[RolloutSummaryOut]


class RolloutOut(RolloutSummaryOut):
    waves_spec: str
    max_failure_ratio: float
    wave_timeout_s: float
    wave_started: float | None
    waves: list[WaveOut]

    @classmethod
    def of(cls, v: RolloutView) -> RolloutOut:
        finished = v.status in ("completed", "halted", "aborted")
        waves = []
        for i, wave in enumerate(v.plan):
            devices = [RolloutDeviceOut(device_id=d, result=v.devices[d].result, detail=v.devices[d].detail,
                                        director_version=v.devices[d].director_version,
                                        previous_target=v.devices[d].previous_target)
                       for d in wave if d in v.devices]
            counts: dict[str, int] = {}
            for d in devices:
                counts[d.result] = counts.get(d.result, 0) + 1
            state: Literal["waiting", "running", "done"] = (
                "done" if i < v.current_wave or (finished and i == v.current_wave and v.status == "completed")
                else "running" if i == v.current_wave and not finished else "waiting")
            waves.append(WaveOut(index=i, size=len(wave), state=state, counts=counts, devices=devices))
        summary = RolloutSummaryOut.of(v)
        return cls(**summary.model_dump(), waves_spec=v.waves_spec, max_failure_ratio=v.max_failure_ratio,
                   wave_timeout_s=v.wave_timeout_s, wave_started=v.wave_started, waves=waves)
