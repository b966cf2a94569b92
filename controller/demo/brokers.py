"""Brokers the controller can start for a demo or a test: Mosquitto when installed,
otherwise an embedded pure-Python broker (amqtt, MQTT 3.1.1 only).

Each runs as a child process on a port of ours with its own generated config and
persistence, so `restart()` keeps sessions and queued QoS 1 messages like a real broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import FleetgenError


class BrokerError(FleetgenError):
    """A broker could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_binary() -> str | None:
    path = shutil.which("mosquitto")
    if path is None and Path("/usr/sbin/mosquitto").exists():
        path = "/usr/sbin/mosquitto"
    return path


@dataclass
class _ChildBroker:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    protocol = "5"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port, timeout=15):
            self.stop()
            raise BrokerError(f"{type(self).__name__} did not start on port {self.port}; see {self.log_path}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Mosquitto(_ChildBroker):
    """Mosquitto with a generated config. `listener_conf` replaces the anonymous default
    (for TLS listeners and ACLs); `extra_conf` is appended."""

    listener_conf: str = "allow_anonymous true"
    extra_conf: str = ""

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings true",
            # As root, mosquitto would drop to its own user and could not write here.
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1",
            self.listener_conf,
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 10000",
            self.extra_conf,
            "",
        ]
        conf.write_text("\n".join(lines))
        return conf

    def command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        return [binary, "-c", str(self.write_config())]


@dataclass
class FleetMosquitto(_ChildBroker):
    """Mosquitto running the production configuration `fleetgen broker config --out DIR`
    wrote (TLS with the fleet's device CA, a certificate per client, per-device ACL, CRL),
    unchanged, plus a persistence folder and a log of its own."""

    config_dir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text((self.config_dir / "fleetgen.conf").read_text() + "\n".join([
            "user root" if os.geteuid() == 0 else "",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error", "log_type warning", "log_type notice", "log_type information", ""]))
        return [binary, "-c", str(conf)]


@dataclass
class EmbeddedBroker(_ChildBroker):
    """amqtt in a child process: pure Python, MQTT 3.1.1 only."""

    protocol = "3.1.1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "controller.demo.embedded_broker", "--port", str(self.port)]


def start_broker(kind: str, workdir: Path) -> _ChildBroker:
    """`kind`: "mosquitto", "embedded", or "auto" (Mosquitto when installed)."""
    if kind == "auto":
        kind = "mosquitto" if mosquitto_binary() else "embedded"
    broker: _ChildBroker = Mosquitto(workdir) if kind == "mosquitto" else EmbeddedBroker(workdir)
    broker.start()
    return broker
