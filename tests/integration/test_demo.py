"""`make demo ARGS=--once`: the story runs to the end and shows three online devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_once_exits_zero_with_three_online_devices(broker: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--once", "--broker", broker,
         "--workdir", str(tmp_path / "demo"), "--timeout", "60"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("demo-")]
    assert len(rows) == 3, out.stdout
    assert all(" online " in row for row in rows), out.stdout
    expected = "MQTT 3.1.1" if broker == "embedded" else "MQTT 5"
    assert expected in out.stdout
