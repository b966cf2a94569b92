"""Helpers for tests that run `fleetgen-agent serve` / `run` as processes: a fake systemd
NOTIFY_SOCKET, a bundle installed into a state dir, reading the process's stderr."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.update.bundle import build_bundle
from agent.update.store import BundleStore

BIN = Path(sys.executable).parent / "fleetgen-agent"


class FakeSystemd:
    """A datagram socket where the agent's sd_notify messages arrive, in order."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fgnotify-"))
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def receive(self, timeout: float = 30.0) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The next message that has a line starting with `prefix` (earlier ones are kept)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if any(line.startswith(prefix) for line in message.splitlines()):
                return message

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()


def env_for(systemd: FakeSystemd | None, watchdog_usec: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    if systemd is not None:
        env["NOTIFY_SOCKET"] = str(systemd.path)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def install(model_dir: Path, state_dir: Path, tmp: Path) -> Path:
    fgb = tmp / f"{model_dir.name}.fgb"
    build_bundle(model_dir, fgb)
    data = fgb.read_bytes()
    with fgb.open("rb") as f:
        installed = BundleStore(state_dir).install(f, origin=str(fgb), expected_length=len(data),
                                                   expected_sha256=hashlib.sha256(data).hexdigest(), board=None)
    return installed.path


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """stderr lines until one contains `marker` (the process's own announcement)."""
    assert proc.stderr is not None
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {''.join(seen)[-2000:]}")
        seen.append(line)
        if marker in line:
            return line
