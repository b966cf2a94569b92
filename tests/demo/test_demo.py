"""`make demo ARGS=--once` (what it runs: `fleetgen demo --once`) on embedded defaults
(SQLite; Mosquitto with TLS where installed, else the embedded broker) tells the whole
story, and each step's outcome is checked where it happened: the controller's database,
the files the apps got, and the demo's own summary. Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller.demo.brokers import mosquitto_binary
from controller.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def _demo(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "controller", "demo", "--workdir", str(workdir), "--plain", *extra]


def _leftovers(workdir: Path, dashboard: str) -> list[str]:
    """Processes, sockets and listening ports of the demo still around after it exited."""
    found = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout.splitlines()
    found = [line for line in found if "pgrep" not in line]
    found += [str(p) for p in workdir.rglob("*.sock")]
    port = int(dashboard.rsplit(":", 1)[1])
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            found.append(f"port {port} still listening")
    return found


@pytest.mark.timeout(420)
def test_demo_once_tells_the_whole_story(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    out = subprocess.run(_demo(work, "--once"), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["tls"] == (mosquitto_binary() is not None)

    # Devices of four boards, enrolled and online with the factory model.
    devices = summary["devices"]
    assert {d["board"] for d in devices.values()} == {"generic-x86_64", "jetson-orin-nano", "kria-kv260",
                                                      "raspberry-pi-5"}
    assert all(d["online"] and d["factory"] == "austen-3m-int8-1.0.0" for d in devices.values())

    store = Store(f"sqlite:///{work / 'controller' / 'controller.db'}", create=False)
    try:
        text, kiosks = (store.repos.rollouts.get(i) for i in (1, 2))
        events = {d: [e.kind for e in store.events(d)] for d in devices}
    finally:
        store.close()
    # The release rolled out in two waves: committed everywhere healthy, the faulty one
    # rolled back by its health gate to the factory model (and the gate tolerated it).
    assert (text.status, text.plan) == ("completed", (("cpu-1",), ("jetson-1", "kria-1")))
    assert {d: v.result for d, v in text.devices.items()} == {"cpu-1": "committed", "jetson-1": "committed",
                                                              "kria-1": "failed"}
    assert kiosks.status == "completed" and kiosks.devices["pi-1"].result == "committed"
    assert "update.rolled_back" in events["kria-1"] and "update.committed" not in events["kria-1"]
    assert all("update.committed" in events[d] for d in ("cpu-1", "jetson-1", "pi-1"))
    assert devices["kria-1"]["bundle"] == "austen-3m-int8-1.0.0" and "crash" in devices["kria-1"]["rolled_back"]
    assert devices["cpu-1"]["bundle"] == devices["jetson-1"]["bundle"] == "austen-3m-int8-1.1.0"
    assert devices["pi-1"]["bundle"] == "digits-cvae-onnx-1.0.0"

    # The budget was shared, pushed and is in force on every device of the group, and held.
    power = summary["power"]
    assert power["budget_w"] == 40 and power["allocated_w"] <= 40 + 1e-6
    assert 12 <= power["devices"]["cpu-1"]["allocated_w"] <= 20  # its floor and cap
    for d, v in power["devices"].items():
        assert abs(v["budget_w"] - v["allocated_w"]) <= 0.05 * v["allocated_w"] + 0.01, (d, v)
        assert v["draw_w"] is None or v["draw_w"] <= v["budget_w"], (d, v)

    # With the broker gone: text from every text device, an image from the kiosk, through the local API.
    offline = summary["offline"]
    assert summary["timings_s"]["offline"] > summary["timings_s"]["power"]
    for d in ("cpu-1", "jetson-1", "kria-1"):
        assert len(offline[d]["text"].split()) >= 10, offline[d]
    image = Path(offline["pi-1"]["path"]).read_bytes()
    assert image.startswith(PNG) and len(image) == offline["pi-1"]["png_bytes"]
    assert "broker stopped" in out.stdout.split("8. the network goes away", 1)[1].split("curl", 1)[0]

    # What the terminal ends with: the dashboard and commands to try; and nothing left behind.
    assert summary["dashboard"] in out.stdout and "fleetgen rollout status 1" in out.stdout
    assert "curl --unix-socket" in out.stdout and "openai.OpenAI(" in out.stdout
    assert _leftovers(work, summary["dashboard"]) == []


@pytest.mark.timeout(180)
def test_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(_demo(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # interrupt once the broker and the controller run (the agents'
        lines.append(line)    # stop is the one --once takes, checked above)
        if "dashboard and REST API on" in line:
            break
    assert proc.poll() is None, "".join(lines)
    dashboard = lines[-1].split("dashboard and REST API on ", 1)[1].split(",", 1)[0]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, "".join(lines) + rest
    assert _leftovers(work, dashboard) == []
