"""`make demo ARGS=--once`: the whole story runs to the end: three devices online, a signed
model installed on each over MQTT, then generation with the broker gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_once_runs_the_whole_story(broker: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--once", "--broker", broker,
         "--workdir", str(tmp_path / "demo"), "--timeout", "60"],
        capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    expected = "MQTT 3.1.1" if broker == "embedded" else "MQTT 5"
    assert expected in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("demo-")]
    first, second = rows[:3], rows[3:]
    assert len(first) == 3 and all(" online " in r for r in first), out.stdout
    # The second table: every device runs the signed bundle it was pushed.
    assert len(second) == 3 and all(r.rstrip().endswith("austen-3m-int8-1.0.0") for r in second), out.stdout
    offline = out.stdout.split("5. the broker goes away", 1)[1]
    generated = [line for line in offline.splitlines()[2:] if line.strip() and line.strip() != "done."]
    assert generated and len(" ".join(generated).split()) >= 10, offline
    assert out.stdout.rstrip().endswith("done.")


@pytest.mark.timeout(300)
def test_demo_keeps_running_until_ctrl_c_then_finishes_offline(tmp_path: Path) -> None:
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "demo", "--broker", "mosquitto", "--workdir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C to go on" in line:
            break
    time.sleep(2)
    assert proc.poll() is None, "".join(lines)  # still running: it waits for Ctrl-C
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert output.rstrip().endswith("done."), output
    # Nothing it started is left running (broker, controller, agents).
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
