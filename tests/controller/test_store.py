from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agent.protocol import Event, Reported, Status, TelemetryBatch, TelemetrySample
from controller.store import Ingested, Store, normalise_url

PG_URL = os.environ.get("FLEETGEN_TEST_PG_URL", "postgresql://postgres@127.0.0.1/test")


def _pg_available() -> bool:
    try:
        with create_engine(normalise_url(PG_URL)).connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'c.db'}")
        yield s
        s.close()
        return
    if not _pg_available():
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(PG_URL))
    with admin.begin() as c:
        c.execute(text(f"create schema {schema}"))
    s = Store(normalise_url(PG_URL) + f"?options=-csearch_path%3D{schema}")
    yield s
    s.close()
    with admin.begin() as c:
        c.execute(text(f"drop schema {schema} cascade"))
    admin.dispose()


def sample(seq: int) -> TelemetrySample:
    return TelemetrySample(seq=seq, ts=100.0 + seq, cpu_pct=10, mem_used_mb=1, mem_total_mb=2)


def test_registry_follows_status_and_reported(store: Store) -> None:
    store.apply([
        Ingested("d1", 10.0, Status(state="online", ts=9.0, agent_version="1.0")),
        Ingested("d1", 11.0, Reported(device_id="d1", agent_version="1.0", board="jetson-orin-nano", ts=11.0,
                                      active_bundle="tiny-1.0", health="ok")),
    ])
    [d] = store.devices()
    assert (d.id, d.online, d.board, d.active_bundle, d.health, d.last_seen) == (
        "d1", True, "jetson-orin-nano", "tiny-1.0", "ok", 11.0)
    store.apply([Ingested("d1", 20.0, Status(state="offline", ts=19.0))])
    [d] = store.devices()
    assert not d.online and d.last_seen == 20.0 and d.board == "jetson-orin-nano"


def test_telemetry_and_events_dedup_by_device_and_seq(store: Store) -> None:
    store.apply([Ingested("d1", 0.5, Status(state="online", ts=0.5))])
    batch = TelemetryBatch(device_id="d1", samples=[sample(1), sample(2)])
    store.apply([Ingested("d1", 1.0, batch)])
    # The agent re-sends after a reconnect: overlapping batch, plus one new sample.
    store.apply([Ingested("d1", 2.0, TelemetryBatch(device_id="d1", samples=[sample(2), sample(3)]))])
    assert store.telemetry_count("d1") == 3
    ev = Event(device_id="d1", seq=5, ts=1.0, kind="install.done", details={"ok": True})
    store.apply([Ingested("d1", 1.0, ev), Ingested("d1", 1.0, ev)])
    store.apply([Ingested("d1", 1.0, ev)])
    events = store.events("d1")
    assert len(events) == 1 and events[0].details == {"ok": True}


def test_bad_database_url_is_a_config_error(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="database_url"):
        Store("nonsense://")


def test_telemetry_of_an_unknown_device_is_dropped_and_counted(store: Store) -> None:
    result = store.apply([Ingested("ghost", 1.0, TelemetryBatch(device_id="ghost", samples=[sample(1)]))])
    assert result.unknown_device == 1
    assert store.telemetry_count("ghost") == 0
    assert store.devices() == []
