"""The web's read side: SQL over the store's tables, returning frozen views.

Filtering, sorting and paging of the device list happen in SQL (the fleet can be large);
telemetry over a range is averaged per `step` seconds in SQL, so a day of 5-second samples
becomes a few hundred points without leaving the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Integer, and_, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from controller.store import Store
from controller.store.core import DeviceRow, EventRow, TelemetryRow

SortKey = Literal["id", "board", "status", "bundle", "health", "last_seen", "power_w", "budget_w",
                  "tokens_per_s", "temp_c"]
Status = Literal["online", "offline"]
# Telemetry fields a series can carry (TelemetrySample's numeric fields).
SERIES_FIELDS = ("power_w", "tokens_per_s", "latency_ms", "temp_c", "mem_used_mb", "mem_total_mb",
                 "cpu_pct", "requests", "errors")


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    status: Status | None = None
    board: str | None = None
    bundle: str | None = None
    health: str | None = None
    q: str | None = None  # substring of the id


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    id: str
    board: str
    online: bool
    last_seen: float
    agent_version: str
    active_bundle: str | None
    health: str
    power_w: float | None
    budget_w: float | None
    tokens_per_s: float | None
    temp_c: float | None


@dataclass(frozen=True, slots=True)
class DevicePage:
    total: int
    devices: list[DeviceSummary]


@dataclass(frozen=True, slots=True)
class DeviceTwin:
    summary: DeviceSummary
    first_seen: float
    status_ts: float
    slot: str | None
    desired_version: int
    reported: dict[str, Any] | None
    last_sample: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Series:
    since: float
    until: float
    step: float | None
    t: list[float]
    values: dict[str, list[float | None]] = field(default_factory=dict)
    truncated: bool = False  # more than max_points in the range: the first max_points came


def _sample_num(name: str) -> ColumnElement[Any]:
    return DeviceRow.last_sample[name].as_float()


def _budget() -> ColumnElement[Any]:
    return DeviceRow.reported[("power", "budget_w")].as_float()


def _sort_column(key: SortKey) -> ColumnElement[Any]:
    columns: dict[str, Any] = {
        "id": DeviceRow.id, "board": DeviceRow.board, "status": DeviceRow.online,
        "bundle": DeviceRow.active_bundle, "health": DeviceRow.health, "last_seen": DeviceRow.last_seen,
        "power_w": _sample_num("power_w"), "budget_w": _budget(),
        "tokens_per_s": _sample_num("tokens_per_s"), "temp_c": _sample_num("temp_c"),
    }
    return columns[key]


def _where(f: DeviceFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if f.status is not None:
        clauses.append(DeviceRow.online.is_(f.status == "online"))
    if f.board is not None:
        clauses.append(DeviceRow.board == f.board)
    if f.bundle is not None:
        clauses.append(DeviceRow.active_bundle == f.bundle)
    if f.health is not None:
        clauses.append(DeviceRow.health == f.health)
    if f.q:
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(DeviceRow.id.like(f"%{escaped}%", escape="\\"))
    return clauses


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summary(row: DeviceRow) -> DeviceSummary:
    sample = row.last_sample or {}
    power = (row.reported or {}).get("power") or {}
    return DeviceSummary(
        id=row.id, board=row.board, online=row.online, last_seen=row.last_seen,
        agent_version=row.agent_version, active_bundle=row.active_bundle, health=row.health,
        power_w=_num(sample.get("power_w")), budget_w=_num(power.get("budget_w")),
        tokens_per_s=_num(sample.get("tokens_per_s")), temp_c=_num(sample.get("temp_c")),
    )


_SUMMARY_COLUMNS = (
    DeviceRow.id, DeviceRow.board, DeviceRow.online, DeviceRow.last_seen, DeviceRow.agent_version,
    DeviceRow.active_bundle, DeviceRow.health, _sample_num("power_w"), _budget(), _sample_num("tokens_per_s"),
    _sample_num("temp_c"),
)


def _summary_of(row: Any) -> DeviceSummary:
    return DeviceSummary(row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6], *(_num(v) for v in row[7:]))


def list_devices(store: Store, f: DeviceFilter, *, sort: SortKey = "id", desc: bool = False,
                 limit: int = 100, offset: int = 0) -> DevicePage:
    # Only the summary's columns (JSON fields extracted in SQL): loading whole rows with their
    # reported documents costs ten times more at 5,000 devices.
    where = _where(f)
    column = _sort_column(sort)
    order = column.desc() if desc else column.asc()
    with Session(store.engine) as session:
        total = session.scalar(select(func.count()).select_from(DeviceRow).where(*where)) or 0
        # NULLs (a device that never sent the field) last either way; id breaks ties stably.
        q = (select(*_SUMMARY_COLUMNS).where(*where).order_by(column.is_(None), order, DeviceRow.id)
             .limit(limit).offset(offset))
        return DevicePage(int(total), [_summary_of(r) for r in session.execute(q).all()])


def device(store: Store, device_id: str) -> DeviceTwin | None:
    with Session(store.engine) as session:
        row = session.get(DeviceRow, device_id)
        if row is None:
            return None
        return DeviceTwin(summary(row), row.first_seen, row.status_ts, row.slot, row.desired_version,
                            row.reported, row.last_sample)


def device_exists(store: Store, device_id: str) -> bool:
    with Session(store.engine) as session:
        return session.get(DeviceRow, device_id) is not None


def boards_and_status(store: Store) -> list[tuple[str, bool, int]]:
    """(board, online, count) over the fleet."""
    with Session(store.engine) as session:
        q = select(DeviceRow.board, DeviceRow.online, func.count()).group_by(DeviceRow.board, DeviceRow.online)
        return [(b, bool(o), int(n)) for b, o, n in session.execute(q).all()]


def latest_figures(store: Store) -> list[DeviceSummary]:
    """Every device's summary (power, budget, tokens/s) for /metrics, id order."""
    with Session(store.engine) as session:
        return [_summary_of(r) for r in session.execute(select(*_SUMMARY_COLUMNS).order_by(DeviceRow.id)).all()]


def _bucket(store: Store, step: float) -> ColumnElement[Any]:
    # floor(ts / step): SQLite's CAST truncates (ts >= 0, so that is floor); PostgreSQL's rounds.
    scaled = TelemetryRow.ts / step
    if store.engine.dialect.name == "sqlite":
        return cast(scaled, Integer)
    return func.floor(scaled)


def telemetry(store: Store, device_id: str, since: float, until: float, step: float | None,
              fields: Sequence[str] = SERIES_FIELDS, max_points: int = 10_000) -> Series:
    """Samples in [since, until): raw (step None, at most `max_points`) or averaged per step."""
    in_range = and_(TelemetryRow.device_id == device_id, TelemetryRow.ts >= since, TelemetryRow.ts < until)
    values: dict[str, list[float | None]] = {name: [] for name in fields}
    t: list[float] = []
    with Session(store.engine) as session:
        if step is None:
            q = (select(TelemetryRow.ts, TelemetryRow.sample).where(in_range).order_by(TelemetryRow.ts)
                 .limit(max_points + 1))
            rows = session.execute(q).all()
            truncated = len(rows) > max_points
            for ts, sample in rows[:max_points]:
                t.append(float(ts))
                for name in fields:
                    values[name].append(_num(sample.get(name)))
        else:
            bucket = _bucket(store, step).label("bucket")
            columns = [func.avg(TelemetryRow.sample[name].as_float()) for name in fields]
            q = select(bucket, *columns).where(in_range).group_by(bucket).order_by(bucket).limit(max_points + 1)
            rows = session.execute(q).all()
            truncated = len(rows) > max_points
            for row in rows[:max_points]:
                t.append(float(row[0]) * step)
                for name, value in zip(fields, row[1:], strict=True):
                    values[name].append(None if value is None else float(value))
    return Series(since, until, step, t, values, truncated)


@dataclass(frozen=True, slots=True)
class EventView:
    device_id: str
    seq: int
    ts: float
    kind: str
    level: str
    message: str
    details: dict[str, Any]


def events(store: Store, device_id: str | None, *, since: float | None = None, level: str | None = None,
           kind: str | None = None, limit: int = 100) -> list[EventView]:
    """Newest first."""
    q = select(EventRow).order_by(EventRow.ts.desc(), EventRow.seq.desc()).limit(limit)
    if device_id is not None:
        q = q.where(EventRow.device_id == device_id)
    if since is not None:
        q = q.where(EventRow.ts >= since)
    if level is not None:
        q = q.where(EventRow.level == level)
    if kind is not None:
        q = q.where(or_(EventRow.kind == kind, EventRow.kind.startswith(kind + ".", autoescape=True)))
    with Session(store.engine) as session:
        return [EventView(r.device_id, r.seq, r.ts, r.kind, r.level, r.message, dict(r.details))
                for r in session.scalars(q).all()]


