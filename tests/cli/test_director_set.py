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
