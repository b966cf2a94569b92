"""`fleetgen fleet ls` reads what exists and creates nothing (issue 8, item 4)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.cli import main as fleetgen


def test_no_database_is_said_and_none_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    code = fleetgen(["fleet", "ls", "--state-dir", str(state)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and f"no controller database at {state / 'controller.db'}" in err[0], err
    assert not state.exists()  # neither the file nor its directory


def test_an_explicit_sqlite_url_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "sub" / "fleet.db"
    assert fleetgen(["fleet", "ls", "--db", f"sqlite:///{db}"]) == 1
    assert "no controller database" in capsys.readouterr().err
    assert not db.parent.exists()


def test_a_file_that_is_not_a_controller_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "other.db"
    sqlite3.connect(db).close()  # an empty SQLite file
    assert fleetgen(["fleet", "ls", "--db", f"sqlite:///{db}"]) == 1
    assert "holds no controller tables" in capsys.readouterr().err
    with sqlite3.connect(db) as conn:  # no tables created in it
        assert conn.execute("select name from sqlite_master").fetchall() == []


def test_an_existing_database_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.protocol import Status
    from controller.store import Ingested, Store

    db = f"sqlite:///{tmp_path / 'controller.db'}"
    store = Store(db)  # what `fleetgen serve` does
    store.apply([Ingested("dev-1", 100.0, Status(state="online", ts=100.0, agent_version="0.1.0"))])
    store.close()
    assert fleetgen(["fleet", "ls", "--db", db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in doc["devices"]] == ["dev-1"]
