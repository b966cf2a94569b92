"""The controller's store: device registry (twins), telemetry and events, in SQLAlchemy.

SQLite by default (one file, WAL so `fleetgen fleet ls` reads while `serve` writes),
PostgreSQL by URL. Telemetry and events are keyed by (device, seq) and inserted with
"on conflict do nothing", so a batch the agent re-sends after a reconnect is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from agent.errors import ConfigError, FleetgenError
from agent.protocol import Event, Reported, Status, TelemetryBatch, TelemetrySample

log = logging.getLogger(__name__)

DEMAND_ALPHA = 0.2


class StoreError(FleetgenError):
    """The database cannot be opened or written."""


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    board: Mapped[str] = mapped_column(String(256), default="")
    agent_version: Mapped[str] = mapped_column(String(256), default="")
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    status_ts: Mapped[float] = mapped_column(Float, default=0.0)
    first_seen: Mapped[float] = mapped_column(Float, default=0.0)
    last_seen: Mapped[float] = mapped_column(Float, default=0.0)
    active_bundle: Mapped[str | None] = mapped_column(String(256), nullable=True)
    slot: Mapped[str | None] = mapped_column(String(64), nullable=True)
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    desired_version: Mapped[int] = mapped_column(Integer, default=0)
    reported: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_sample: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Recent power demand: an exponential moving average of the samples' power_w, what the
    # power allocator shares a budget by (one noisy sample would make allocations churn).
    demand_w: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When `fleetgen device revoke` revoked it (None: not revoked). A revoked device is in no
    # group and no rollout and gets no director document; enrolling it again clears this.
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)


class TelemetryRow(Base):
    __tablename__ = "telemetry"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    sample: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "events"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    # The controller's clock when the event was ingested: rollouts compare it with the time
    # they directed the device (device clocks may be off).
    received: Mapped[float] = mapped_column(Float, index=True, default=0.0)
    kind: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


# -- enrollment (controller.enroll): one-time tokens and the certificates issued for them --


class EnrollTokenRow(Base):
    """A one-time enrollment token, stored as the SHA-256 of its secret (never the secret)."""

    __tablename__ = "enroll_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(63), index=True)
    group_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    used: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeviceCertRow(Base):
    """A device certificate the CA issued; `revoked` set puts its serial on the CRL."""

    __tablename__ = "device_certs"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # hex
    device_id: Mapped[str] = mapped_column(String(63), index=True)
    issued: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass(frozen=True, slots=True)
class Ingested:
    """A validated document from a device, with the controller's receive time."""

    device_id: str
    received: float
    message: msgspec.Struct


@dataclass(frozen=True, slots=True)
class ApplyResult:
    unknown_device: int = 0  # telemetry batches of devices nobody registered (dropped)
    unknown_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DeviceView:
    id: str
    board: str
    online: bool
    last_seen: float
    agent_version: str
    active_bundle: str | None
    health: str
    revoked: float | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # FULL: the ingest acknowledges a batch to the broker once committed, so the commit must
    # survive a power cut too (ADR 0071); in WAL mode that is one fsync of the log per commit.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _insert_ignore(engine: Engine, table: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


_JSON = msgspec.json.Encoder()


# The telemetry insert as the driver runs it, the samples already encoded: SQLAlchemy's
# per-row parameter processing and JSON encoding cost more than the database's insert.
# SQLite: executemany over tuples; PostgreSQL: one INSERT ... SELECT over a JSON array.
_SQLITE_SAMPLES = "INSERT INTO telemetry (device_id, seq, ts, sample) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
# What telemetry changes on its device (last seen, demand, last sample), for the batch's devices.
_SQLITE_TOUCH = "UPDATE devices SET last_seen = ?, demand_w = ?, last_sample = ? WHERE id = ?"
_PG_TOUCH = ("UPDATE devices AS d SET last_seen = (r->>1)::float8, demand_w = (r->>2)::float8, last_sample = r->3 "
             "FROM json_array_elements(%s::json) AS r WHERE d.id = r->>0")
_PG_SAMPLES = ("INSERT INTO telemetry (device_id, seq, ts, sample) "
               "SELECT r->>0, (r->>1)::bigint, (r->>2)::float8, r->3 FROM json_array_elements(%s::json) AS r "
               "ON CONFLICT DO NOTHING")


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver the controller extra installs)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class NoDatabaseError(StoreError):
    """A read-only command found no controller database to read."""


def open_existing(url: str) -> Store:
    """Open a controller database that must already exist, creating nothing (for read-only
    commands such as `fleetgen fleet ls`); NoDatabaseError says what is missing."""
    url = normalise_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise NoDatabaseError(
            f"no controller database at {url.removeprefix('sqlite:///')} "
            "(`fleetgen serve` creates it; --db or database_url names another)"
        )
    store = Store(url, create=False)
    try:
        present = inspect(store.engine).has_table(DeviceRow.__tablename__)
    except OperationalError as e:
        store.close()
        raise StoreError(f"cannot open database {store.engine.url!r}: {e.orig}") from None
    if not present:
        store.close()
        raise NoDatabaseError(
            f"database {store.engine.url!r} holds no controller tables (`fleetgen serve` creates them)"
        )
    from controller.store.migrate import current, head

    # A read-only command does not migrate; an older schema would fail on its first query.
    have, want = current(store.engine), head()
    if have != want:
        store.close()
        raise StoreError(f"database {store.engine.url!r} has schema {have or 'from before migrations'}, "
                         f"this fleetgen needs {want}: run `fleetgen db upgrade`")
    return store


class Store:
    def __init__(self, url: str, *, create: bool = True) -> None:
        url = normalise_url(url)
        try:
            if create and url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, ValueError) as e:
            raise ConfigError(f"database_url: {url!r} is not a usable SQLAlchemy URL ({e})") from None
        except ModuleNotFoundError as e:
            raise ConfigError(f"database_url: {url!r} needs a driver that is not installed ({e.name})") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            self._create_schema()
        from controller.store.repositories import Repositories

        self.repos = Repositories(self.engine)

    def _create_schema(self) -> None:
        from controller.store.migrate import upgrade

        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- ingest ----------------------------------------------------------------------

    def apply(self, batch: Sequence[Ingested]) -> ApplyResult:
        """Write a batch of documents in one transaction.

        A few statements per batch whatever its size (this is the ingest's hot path, see
        tests/bench/controller.py): the batch's devices are read in one or two queries; samples
        and events are inserted in one statement each, "on conflict do nothing", so (device,
        seq) is stored once; telemetry's updates of its devices (last seen, last sample, demand)
        are one more; only status and reported documents go through the ORM.

        Telemetry of a device the registry does not know (it never said status or reported)
        is dropped and counted: nothing lands in the store for an id nobody registered."""
        unknown = 0
        unknown_ids: set[str] = set()
        samples: list[tuple[str, int, float, TelemetrySample]] = []
        events: list[dict[str, Any]] = []
        # Per device that sent only telemetry: [last_seen, demand_w, last_sample].
        touched: dict[str, list[Any]] = {}
        with Session(self.engine, autoflush=False) as session, session.begin():
            ids = sorted({item.device_id for item in batch})
            documents = sorted({item.device_id for item in batch if not isinstance(item.message, TelemetryBatch)})
            known: dict[str, tuple[float, float | None]] = {}
            rows: dict[str, DeviceRow] = {}
            for i in range(0, len(ids), 500):
                for device_id, last_seen, demand in session.execute(
                        select(DeviceRow.id, DeviceRow.last_seen, DeviceRow.demand_w)
                        .where(DeviceRow.id.in_(ids[i:i + 500]))):
                    known[device_id] = (last_seen or 0.0, demand)
            for i in range(0, len(documents), 500):
                for row in session.scalars(select(DeviceRow).where(DeviceRow.id.in_(documents[i:i + 500]))):
                    rows[row.id] = row

            def device_row(item: Ingested) -> DeviceRow:
                row = rows.get(item.device_id)
                if row is None:
                    row = DeviceRow(id=item.device_id, first_seen=item.received, board="", agent_version="",
                                    online=False, status_ts=0.0, health="unknown", desired_version=0,
                                    last_seen=0.0)
                    session.add(row)
                    rows[item.device_id] = row
                    known[item.device_id] = (0.0, None)
                if item.received > (row.last_seen or 0.0):
                    row.last_seen = item.received
                return row

            for item in batch:
                msg = item.message
                if isinstance(msg, TelemetryBatch):
                    if item.device_id not in known:
                        unknown += 1
                        unknown_ids.add(item.device_id)
                        continue
                    state = touched.get(item.device_id)
                    if state is None:
                        state = touched[item.device_id] = [*known[item.device_id], None]
                    demand = state[1]
                    for s in msg.samples:
                        samples.append((item.device_id, s.seq, s.ts, s))
                        if s.power_w is not None:
                            demand = s.power_w if demand is None else (
                                DEMAND_ALPHA * s.power_w + (1 - DEMAND_ALPHA) * demand)
                    state[0] = max(state[0], item.received)
                    state[1] = demand
                    state[2] = msg.samples[-1]
                    continue
                row = device_row(item)
                if isinstance(msg, Status):
                    row.online = msg.state == "online"
                    row.status_ts = msg.ts
                    if msg.agent_version:
                        row.agent_version = msg.agent_version
                elif isinstance(msg, Reported):
                    row.board = msg.board
                    row.agent_version = msg.agent_version
                    row.active_bundle = msg.active_bundle
                    row.slot = msg.slot
                    row.health = msg.health
                    row.desired_version = msg.desired_version
                    row.reported = msgspec.to_builtins(msg)
                elif isinstance(msg, Event):
                    events.append({"device_id": item.device_id, "seq": msg.seq, "ts": msg.ts,
                                   "received": item.received,
                                   "kind": msg.kind, "level": msg.level, "message": msg.message,
                                   "details": dict(msg.details)})
            # Telemetry of a device that also sent a document here goes into its ORM row.
            for device_id in [d for d in touched if d in rows]:
                last_seen, demand, last_sample = touched.pop(device_id)
                row = rows[device_id]
                row.last_seen = max(row.last_seen or 0.0, last_seen)
                row.demand_w, row.last_sample = demand, msgspec.to_builtins(last_sample)
            session.flush()
            conn = session.connection()
            if samples:
                if self.engine.dialect.name == "postgresql":
                    # One statement, one JSON parameter for the whole batch (psycopg's executemany
                    # is a round trip per row, and its text arrays escape JSON slowly).
                    conn.exec_driver_sql(_PG_SAMPLES, (_JSON.encode(samples).decode(),))
                else:
                    conn.exec_driver_sql(_SQLITE_SAMPLES, [(d, q, t, _JSON.encode(x).decode())
                                                           for d, q, t, x in samples])
            if touched:
                if self.engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(_PG_TOUCH, (_JSON.encode([(d, *v) for d, v in touched.items()]).decode(),))
                else:
                    conn.exec_driver_sql(_SQLITE_TOUCH, [(v[0], v[1], _JSON.encode(v[2]).decode(), d)
                                                         for d, v in touched.items()])
            if events:
                conn.execute(_insert_ignore(self.engine, EventRow.__table__), events)
        return ApplyResult(unknown_device=unknown, unknown_ids=frozenset(unknown_ids))

    # -- queries ---------------------------------------------------------------------

    def devices(self) -> list[DeviceView]:
        with Session(self.engine) as session:
            rows = session.scalars(select(DeviceRow).order_by(DeviceRow.id)).all()
            return [
                DeviceView(r.id, r.board, r.online, r.last_seen, r.agent_version, r.active_bundle, r.health,
                           r.revoked)
                for r in rows
            ]

    def events(self, device_id: str | None = None, kinds: Iterable[str] | None = None,
               limit: int = 1000) -> list[EventRow]:
        with Session(self.engine) as session:
            q = select(EventRow).order_by(EventRow.ts.desc()).limit(limit)
            if device_id is not None:
                q = q.where(EventRow.device_id == device_id)
            if kinds is not None:
                q = q.where(EventRow.kind.in_(list(kinds)))
            return list(session.scalars(q).all())

    def telemetry_count(self, device_id: str) -> int:
        from sqlalchemy import func

        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(TelemetryRow)
                                      .where(TelemetryRow.device_id == device_id)) or 0)
