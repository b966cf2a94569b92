"""The registry's bulk reads and the ingest's writes cost a fixed number of statements, not one
(or three) per device: counted with a SQLAlchemy event listener on the engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from agent.protocol import Reported, Status, TelemetryBatch, TelemetrySample
from controller.cli import main as fleetgen
from controller.store import Ingested, Store
from tests.controller.test_store import store  # noqa: F401  (the sqlite/postgres fixture)


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement any engine sends while the block runs."""
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def fleet(db: Store, n: int, now: float = 1_800_000_000.0, start: int = 0) -> None:
    batch = []
    for i in range(start, start + n):
        d = f"q-{i:04d}"
        batch.append(Ingested(d, now, Status(state="online", ts=now, agent_version="1")))
        batch.append(Ingested(d, now, Reported(device_id=d, agent_version="1", board="raspberry-pi-5", ts=now,
                                               active_bundle="tiny-1.0.0", slot="a", health="ok")))
    db.apply(batch)
    for i in range(start, start + n, 3):
        db.repos.devices.tag(f"q-{i:04d}", add=["kiosk"])
        db.repos.desired.next_version(f"q-{i:04d}", target="tiny-1.0.0.fgb")


def _ls_statements(db: str, capsys: pytest.CaptureFixture[str]) -> int:
    capsys.readouterr()
    with statements() as seen:
        assert fleetgen(["device", "ls", "--db", db, "--json"]) == 0
    capsys.readouterr()
    return len([s for s in seen if s.lstrip().upper().startswith("SELECT")])


def test_device_ls_reads_the_registry_in_a_fixed_number_of_queries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    s = Store(db)
    try:
        fleet(s, 5)
        small = _ls_statements(db, capsys)
        fleet(s, 60, start=5)
        large = _ls_statements(db, capsys)
        assert s.repos.devices.list()[3].tags == ("kiosk",)
    finally:
        s.close()
    assert large == small, (small, large)  # not per device
    assert fleetgen(["device", "ls", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"id": "q-0064"' in out and '"tags": [\n        "kiosk"' in out


def test_list_and_detail_agree(store: Store) -> None:  # noqa: F811
    fleet(store, 7)
    store.repos.power.record("g", {"q-0001": 4.5}, [], 1.0)
    listed = {d.id: d for d in store.repos.devices.list()}
    assert list(listed) == sorted(listed)
    for device_id, d in listed.items():
        assert d == store.repos.devices.detail(device_id)
    assert listed["q-0001"].power_budget_w == 4.5 and listed["q-0003"].desired_version == 1


def test_an_ingest_batch_is_a_few_statements_whatever_its_size(store: Store) -> None:  # noqa: F811
    fleet(store, 40)
    now = 1_800_000_100.0

    def telemetry(devices: int, seq0: int) -> list[Ingested]:
        return [Ingested(f"q-{i:04d}", now, TelemetryBatch(device_id=f"q-{i:04d}", samples=[
            TelemetrySample(seq=seq0 + k, ts=now, cpu_pct=1.0, mem_used_mb=1.0, mem_total_mb=2.0, power_w=3.0)
            for k in range(5)])) for i in range(devices)]

    with statements() as few:
        store.apply(telemetry(4, 0))
    with statements() as many:
        store.apply(telemetry(40, 100))
    assert len(many) == len(few) <= 6, many
    assert store.telemetry_count("q-0003") == 10
