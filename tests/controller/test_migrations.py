"""Schema migrations, the desired-state counter, retention, groups and tags on real SQLite
(and PostgreSQL through the `store` fixture where it is reachable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from agent.protocol import Reported, Status, TelemetryBatch, TelemetrySample
from controller.cli import main as fleetgen
from controller.store import Ingested, Store
from controller.store.migrate import current, head
from controller.store.views import GroupRule
from tests.controller.test_store import store  # noqa: F401  (the sqlite/postgres fixture)

OLD_SCHEMA = [
    "CREATE TABLE devices (id VARCHAR(63) PRIMARY KEY, board VARCHAR(256) NOT NULL, agent_version VARCHAR(256) "
    "NOT NULL, online BOOLEAN NOT NULL, status_ts FLOAT NOT NULL, first_seen FLOAT NOT NULL, last_seen FLOAT "
    "NOT NULL, active_bundle VARCHAR(256), slot VARCHAR(64), health VARCHAR(16) NOT NULL, desired_version "
    "INTEGER NOT NULL, reported JSON, last_sample JSON)",
    "CREATE TABLE telemetry (device_id VARCHAR(63) NOT NULL, seq INTEGER NOT NULL, ts FLOAT NOT NULL, "
    "sample JSON NOT NULL, PRIMARY KEY (device_id, seq))",
    "CREATE TABLE events (device_id VARCHAR(63) NOT NULL, seq INTEGER NOT NULL, ts FLOAT NOT NULL, kind "
    "VARCHAR(64) NOT NULL, level VARCHAR(16) NOT NULL, message TEXT NOT NULL, details JSON NOT NULL, "
    "PRIMARY KEY (device_id, seq))",
    "INSERT INTO devices VALUES ('old-1', 'b', '1', 1, 0, 0, 5, NULL, NULL, 'ok', 0, NULL, NULL)",
]


def test_a_database_from_before_migrations_is_stamped_and_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        for stmt in OLD_SCHEMA:
            c.execute(text(stmt))
    engine.dispose()
    assert fleetgen(["db", "upgrade", "--db", url]) == 0
    s = Store(url)
    try:
        assert current(s.engine) == head()
        assert [d.id for d in s.devices()] == ["old-1"]
        assert {"groups", "rollouts", "desired", "rollout_devices"} <= set(inspect(s.engine).get_table_names())
    finally:
        s.close()


def test_db_current_says_when_an_upgrade_is_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    create_engine(url).connect().close()
    assert fleetgen(["db", "current", "--db", url]) == 0
    assert "needs `fleetgen db upgrade`" in capsys.readouterr().out
    assert fleetgen(["db", "upgrade", "--db", url]) == 0
    assert fleetgen(["db", "current", "--db", url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_desired_versions_only_rise_and_keep_what_is_not_changed(store: Store) -> None:  # noqa: F811
    d = store.repos.desired
    a = d.next_version("d1", target="tiny-1.0.0.fgb")
    b = d.next_version("d1", power_budget_w=7.5)
    c = d.next_version("d1", target="tiny-2.0.0.fgb", floor=10)  # a legacy versions.json said 10
    assert (a.version, b.version, c.version) == (1, 2, 11)
    assert (b.target, b.power_budget_w) == ("tiny-1.0.0.fgb", 7.5)
    assert (c.target, c.power_budget_w) == ("tiny-2.0.0.fgb", 7.5)
    assert d.next_version("d2").version == 1


def test_groups_select_by_id_board_tag_and_label(store: Store) -> None:  # noqa: F811
    for i, board in enumerate(["jetson-orin-nano", "raspberry-pi-5", "raspberry-pi-5"]):
        store.apply([Ingested(f"d{i}", 1.0, Status(state="online", ts=1.0)),
                     Ingested(f"d{i}", 1.0, Reported(device_id=f"d{i}", agent_version="1", board=board, ts=1.0,
                                                     labels={"site": "north" if i else "south"}))])
    store.repos.devices.tag("d2", add=["canary"])
    g = store.repos.groups
    g.create("x")
    g.add("x", [GroupRule("board", "jetson-orin-nano")])
    assert g.get("x").members == ("d0",)
    g.add("x", [GroupRule("tag", "canary")])
    assert g.get("x").members == ("d0", "d2")
    g.remove("x", [GroupRule("board", "jetson-orin-nano")])
    g.add("x", [GroupRule("label", "site=north")])
    assert g.get("x").members == ("d1", "d2")
    assert store.repos.devices.tag("d2", remove=["canary"]) == ()


def test_retention_downsamples_old_samples_and_expires_old_buckets(store: Store) -> None:  # noqa: F811
    day = 86400.0
    now = 100 * day
    store.apply([Ingested("d1", 0.0, Status(state="online", ts=0.0))])
    old = [TelemetrySample(seq=i, ts=now - 10 * day + i, cpu_pct=10 * (i % 2), mem_used_mb=1, mem_total_mb=2,
                           power_w=4.0) for i in range(10)]
    recent = [TelemetrySample(seq=100 + i, ts=now - 60 + i, cpu_pct=5, mem_used_mb=1, mem_total_mb=2)
              for i in range(3)]
    ancient = [TelemetrySample(seq=200, ts=now - 95 * day, cpu_pct=1, mem_used_mb=1, mem_total_mb=2)]
    store.apply([Ingested("d1", 1.0, TelemetryBatch(device_id="d1", samples=old + recent + ancient))])
    result = store.repos.retention.prune(now, raw_days=7, keep_days=90, bucket_s=300)
    assert result.downsampled == 11
    assert result.expired_buckets == 1  # the 95-day-old bucket
    assert store.telemetry_count("d1") == 3  # the recent raw samples stay


def test_a_read_only_command_on_an_older_schema_says_to_upgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.store.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'older.db'}"
    engine = create_engine(url)
    upgrade(engine, "0004")
    engine.dispose()
    capsys.readouterr()
    assert fleetgen(["fleet", "ls", "--db", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"has schema 0004, this fleetgen needs {head()}: run `fleetgen db upgrade`" in err[0]
    assert fleetgen(["db", "upgrade", "--db", url]) == 0
    assert fleetgen(["fleet", "ls", "--db", url]) == 0
