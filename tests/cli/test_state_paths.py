"""Commands that write state say where, and the test run writes nowhere else (issue 8, item 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from controller.cli import main as fleetgen
from controller.demo.brokers import Mosquitto
from tests.cli.support import REPO
from tests.support.write_guard import snapshot
from tests.trust.models import make_model_dir


def test_install_bundle_says_where_it_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, usb, state = tmp_path / "repo", tmp_path / "usb", tmp_path / "state"
    assert fleetgen(["keys", "init", "--repo", str(repo)]) == 0
    out = tmp_path / "tiny-1.0.0.fgb"
    assert fleetgen(["bundle", "build", str(make_model_dir(tmp_path / "m")), "-o", str(out)]) == 0
    assert fleetgen(["bundle", "publish", str(out), "--repo", str(repo)]) == 0
    assert fleetgen(["bundle", "export", "--repo", str(repo), "--to", str(usb), "--bundles"]) == 0
    capsys.readouterr()
    assert agent_main(["install-bundle", str(usb / "tiny-1.0.0.fgb"), "--metadata", str(usb),
                       "--state-dir", str(state), "--trust-root", "--board", "generic"]) == 0
    captured = capsys.readouterr()
    assert f"for {state}" in captured.err  # the state dir it trusted the root for
    assert f"-> {state}" in captured.out  # where the bundle went


def _first_line_with(cmd: list[str], needle: str) -> str:
    """Start `cmd`, return its first stderr line holding `needle`, then stop it."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    found: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if needle in line and not found:
                found.append(line)
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), f"no line with {needle!r}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    return found[0]


def test_serve_and_run_say_where_their_state_is(tmp_path: Path, mosquitto: Mosquitto) -> None:
    broker = f"mqtt://127.0.0.1:{mosquitto.port}"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    line = _first_line_with([sys.executable, "-m", "controller", "serve", "--config", str(empty),
                             "--state-dir", str(tmp_path / "ctl"), "--broker", broker], "controller serving")
    assert str(tmp_path / "ctl" / "controller.db") in line
    line = _first_line_with([sys.executable, "-m", "agent", "run", "--config", str(empty), "--device-id", "d1",
                             "--state-dir", str(tmp_path / "dev"), "--broker", broker], "state in")
    assert str(tmp_path / "dev") in line


def test_the_write_guard_sees_new_files(tmp_path: Path) -> None:
    root = tmp_path / "var-lib-fleetgen"
    before = snapshot((root,), repo=None)
    root.mkdir()
    (root / "controller.db").write_text("")
    assert snapshot((root,), repo=None) - before == {str(root), str(root / "controller.db")}
