"""The REST API's wire models (pydantic: they validate input and write the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.web.desired import DesiredView
from controller.web.queries import DeviceDetail, DeviceSummary, EventView, Series


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


class DesiredDocumentOut(Out):
    version: int
    target: str | None = Field(description="the bundle it names (TUF target path); null: none")
    power_budget_w: float | None
    issued: float
    expires: float


class DesiredOut(Out):
    applied_version: int = Field(description="version of the last director document the device applied")
    document: DesiredDocumentOut | None = Field(
        description="the newest director-signed document retained for the device; null when none is known "
                    "(or the controller runs without an image repository)")


class DeviceOut(Out):
    device: DeviceSummaryOut
    first_seen: float
    status_ts: float
    slot: str | None
    reported: dict[str, Any] | None = Field(description="the device's last `reported` document")
    desired: DesiredOut
    last_sample: dict[str, Any] | None = Field(description="the newest telemetry sample")

    @classmethod
    def of(cls, d: DeviceDetail, doc: DesiredView | None) -> DeviceOut:
        return cls(device=DeviceSummaryOut.of(d.summary), first_seen=d.first_seen, status_ts=d.status_ts,
                   slot=d.slot, reported=d.reported, desired=DesiredOut(applied_version=d.desired_version, document=(
                       None if doc is None else DesiredDocumentOut(version=doc.version, target=doc.target,
                                                                   power_budget_w=doc.power_budget_w,
                                                                   issued=doc.issued, expires=doc.expires))),
                   last_sample=d.last_sample)


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
                               description="a published bundle (TUF target path); null: none")
    power_budget_w: float | None = Field(None, ge=0, le=100_000)
    expires_in_s: float = Field(7 * 86400, ge=60, le=366 * 86400)


class DesiredSetOut(Out):
    device_id: str
    version: int
    target: str | None
    power_budget_w: float | None
    expires: float
