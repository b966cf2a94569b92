"""The unit files are valid for systemd, hardened, and start commands that exist.

PITFALLS: `systemd-analyze verify` exits 0 even on unknown keys, so any stderr line fails;
`security --threshold` is the score x 10.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def localised(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this virtualenv instead of /opt/fleetgen/venv."""
    text = (UNITS / unit).read_text().replace("/opt/fleetgen/venv/bin/", f"{BIN}/")
    path = tmp_path / unit
    path.write_text(text)
    return path


# The agent's unit: exposure <= 1.5 (issue 10 asked for <= 1.7, aiming at 1.5).
@pytest.mark.parametrize(("unit", "threshold"), [("fleetgen-agent.service", 15), ("fleetgen-controller.service", 20)])
def test_unit_verifies_cleanly_and_is_hardened(unit: str, threshold: int, tmp_path: Path) -> None:
    path = localised(unit, tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}", str(path)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-2000:]


@pytest.mark.parametrize("unit", ["fleetgen-agent.service", "fleetgen-controller.service"])
def test_exec_start_is_a_working_command(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / unit)
    argv = parser["Service"]["ExecStart"].split()
    script = BIN / Path(argv[0]).name
    out = subprocess.run([str(script), *argv[1:], "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout


def _service_section(unit: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / unit)
    return parser["Service"]


def test_agent_unit_is_notify_with_a_watchdog() -> None:
    service = _service_section("fleetgen-agent.service")
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"  # only the agent itself, not its children
    assert service["WatchdogSec"].endswith("s") and int(service["WatchdogSec"][:-1]) >= 10
    # the agent drains and exits within 10 s of SIGTERM; systemd waits no longer than that
    assert service["TimeoutStopSec"] == "10s"
    assert service["RuntimeDirectory"] == "fleetgen"  # /run/fleetgen/agent.sock
