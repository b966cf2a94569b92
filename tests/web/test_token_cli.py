"""`fleetgen token create/revoke/ls`: printed once, stored hashed, refused when revoked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from controller.cli import main as fleetgen
from controller.store import Store
from controller.web.tokens import Tokens, digest


def test_create_ls_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert fleetgen(["token", "create", "ci-bot", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("fgt_") and len(token) > 40
    store = Store(db)
    try:
        with store.engine.connect() as c:
            rows = c.execute(text("select name, digest from api_tokens")).all()
        assert rows == [("ci-bot", digest(token))]  # only the digest is kept
        assert Tokens(store).check(token) == "ci-bot"
        assert fleetgen(["token", "ls", "--json", "--db", db]) == 0
        listing = json.loads(capsys.readouterr().out)
        assert listing["schema"] == 1 and [t["name"] for t in listing["tokens"]] == ["ci-bot"]
        assert fleetgen(["token", "revoke", "ci-bot", "--db", db]) == 0
        assert Tokens(store).check(token) is None
    finally:
        store.close()


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert fleetgen(["token", "create", "ops", "--db", db]) == 0
    capsys.readouterr()
    assert fleetgen(["token", "create", "ops", "--db", db]) == 1
    assert "already exists" in capsys.readouterr().err
    assert fleetgen(["token", "create", "Bad Name", "--db", db]) == 2
    assert "token name 'Bad Name'" in capsys.readouterr().err
    assert fleetgen(["token", "revoke", "nobody", "--db", db]) == 1
    assert "no token named 'nobody'" in capsys.readouterr().err


def test_check_refuses_lookalikes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        tokens = Tokens(store)
        real = tokens.create("a")
        assert tokens.check(real[:-1]) is None and tokens.check(real + "x") is None
        assert tokens.check(digest(real)) is None and tokens.check("fgt_" + "x" * 200) is None
    finally:
        store.close()
