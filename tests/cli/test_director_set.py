"""`fleetgen director set`: arguments checked before signing, and quiet when all is well
(issue 8, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main as fleetgen
from controller.demo.brokers import Mosquitto
from tests.cli.support import cli
from tests.trust.models import make_model_dir


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    repo = tmp_path / "repo"
    assert fleetgen(["keys", "init", "--repo", str(repo)]) == 0
    model = make_model_dir(tmp_path / "models")
    out = tmp_path / "tiny-1.0.0.fgb"
    assert fleetgen(["bundle", "build", str(model), "-o", str(out)]) == 0
    assert fleetgen(["bundle", "publish", str(out), "--repo", str(repo)]) == 0
    capsys.readouterr()
    return repo


def _version(capsys: pytest.CaptureFixture[str], repo: Path, tmp_path: Path) -> int:
    from agent.protocol.codec import decode_as
    from agent.protocol.messages import DesiredState, SignedEnvelope

    out = tmp_path / "desired.json"
    assert fleetgen(["director", "set", "dev-7", "--repo", str(repo), "--no-target", "-o", str(out)]) == 0
    capsys.readouterr()
    return decode_as(DesiredState, decode_as(SignedEnvelope, out.read_bytes()).payload).version


@pytest.mark.parametrize("broker", ["mqtt:/broker", "http://broker:1883", "mqtt://", "mqtts://broker:8883"])
def test_a_bad_broker_is_refused_before_a_version_is_used(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: str
) -> None:
    code = fleetgen(["director", "set", "dev-7", "--repo", str(repo), "--target", "tiny-1.0.0.fgb",
                     "--broker", broker])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--broker" in err[0], err
    assert "signed" not in capsys.readouterr().err
    assert _version(capsys, repo, tmp_path) == 1  # the refused command signed nothing


def test_publishing_prints_one_line_and_no_link_chatter(repo: Path, mosquitto: Mosquitto) -> None:
    r = cli("controller", "director", "set", "dev-7", "--repo", str(repo), "--target", "tiny-1.0.0.fgb",
            "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
    assert r.code == 0, r.err
    assert r.err_lines == ["dev-7: desired state signed (tiny-1.0.0.fgb)"]


def test_asking_for_info_still_shows_the_link(repo: Path, mosquitto: Mosquitto) -> None:
    r = cli("controller", "director", "--log-level", "INFO", "set", "dev-7", "--repo", str(repo),
            "--target", "tiny-1.0.0.fgb", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}")
    assert r.code == 0, r.err
    assert any("connected to" in line for line in r.err_lines), r.err
    # the disconnect the command asked for is not a warning, and nothing reconnects
    assert not any("WARNING" in line or "reconnecting" in line for line in r.err_lines), r.err


def _signed_version(path: Path) -> int:
    from agent.protocol.codec import decode_as
    from agent.protocol.messages import DesiredState, SignedEnvelope

    return decode_as(DesiredState, decode_as(SignedEnvelope, path.read_bytes()).payload).version


def test_versions_come_from_the_store_counter_that_rollouts_use(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.store import Store

    db = f"sqlite:///{tmp_path / 'controller.db'}"
    out = tmp_path / "d.json"
    argv = ["director", "set", "dev-7", "--repo", str(repo), "--target", "tiny-1.0.0.fgb", "--db", db, "-o", str(out)]
    assert fleetgen(argv) == 0
    assert _signed_version(out) == 1
    store = Store(db)
    try:
        # The rollout path (and the power allocator) count on: 2, 3.
        assert store.repos.desired.next_version("dev-7", target="tiny-1.0.0.fgb").version == 2
        assert store.repos.desired.next_version("dev-7", power_budget_w=9.0).version == 3
        assert fleetgen(argv) == 0
        assert _signed_version(out) == 4  # never a number the store handed out already
        desired = store.repos.desired.get("dev-7")
        assert desired is not None and (desired.version, desired.target) == (4, "tiny-1.0.0.fgb")
    finally:
        store.close()
    assert not (repo / "director" / "versions.json").exists()  # the file counter is gone


def test_two_writers_at_once_never_reuse_a_version(repo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.cli.support import REPO

    db = f"sqlite:///{tmp_path / 'controller.db'}"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    outs = [tmp_path / f"d{i}.json" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-m", "controller", "director", "set", "dev-7", "--repo", str(repo),
                               "--no-target", "--db", db, "-o", str(out)], env=env, stderr=subprocess.PIPE)
             for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert sorted(_signed_version(out) for out in outs) == [1, 2, 3, 4, 5, 6]


def test_without_a_controller_database_the_counter_lives_beside_the_repository(
        repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _version(capsys, repo, tmp_path) == 1
    assert _version(capsys, repo, tmp_path) == 2
    assert (repo / "director" / "desired.db").is_file()


def test_a_revoked_device_gets_no_document(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.protocol import Status
    from controller.store import Ingested, Store

    db = f"sqlite:///{tmp_path / 'controller.db'}"
    store = Store(db)
    try:
        store.apply([Ingested("dev-7", 1.0, Status(state="online", ts=1.0))])
        store.repos.devices.revoke("dev-7", 2.0)
    finally:
        store.close()
    out = tmp_path / "d.json"
    code = fleetgen(["director", "set", "dev-7", "--repo", str(repo), "--no-target", "--db", db, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dev-7 is revoked" in err[0], err
    assert not out.exists()
