"""Run a controller and agents as separate processes, each with its own config and
state directory: the demo's engine, and the harness of the integration tests."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.store import DeviceView, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    board_profile: str = "auto"
    board_root: str = "/"
    # The demo's devices: an enrolled identity (CA, certificate, key) for mqtts://, their own
    # state directory and local API socket, and environment of their own.
    tls: tuple[str, str, str] | None = None
    state_dir: str | None = None
    api_socket: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class FleetProcesses:
    workdir: Path
    broker_url: str
    protocol: str = "5"
    keepalive: int = 5
    sample_interval_s: float = 1.0
    publish_interval_s: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    repository: Path | None = None
    controller: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'controller' / 'controller.db'}"

    def _mqtt_section(self, client_id: str, tls: tuple[str, str, str] | None = None) -> str:
        files = [] if tls is None else [f"{key} = {_toml_str(path)}" for key, path in
                                        zip(("ca_file", "cert_file", "key_file"), tls, strict=True)]
        return "\n".join([
            "[mqtt]",
            f"url = {_toml_str(self.broker_url)}",
            f"protocol = {_toml_str(self.protocol)}",
            f"keepalive = {self.keepalive}",
            f"client_id = {_toml_str(client_id)}",
            "reconnect_min_s = 0.2",
            "reconnect_max_s = 2.0",
            *files,
        ])

    def controller_config(self) -> Path:
        path = self.workdir / "controller.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([
            f"state_dir = {_toml_str(str(self.workdir / 'controller'))}",
            f"database_url = {_toml_str(self.db_url)}",
            f"repository = {_toml_str(str(self.repository))}" if self.repository else "",
            self._mqtt_section("fleetgen-controller-demo"),
            "",
        ]))
        return path

    def state_dir(self, spec: DeviceSpec) -> Path:
        return Path(spec.state_dir) if spec.state_dir else self.workdir / "agents" / spec.device_id

    def agent_config(self, spec: DeviceSpec) -> Path:
        path = self.workdir / "agents" / f"{spec.device_id}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([
            f"device_id = {_toml_str(spec.device_id)}",
            f"state_dir = {_toml_str(str(self.state_dir(spec)))}",
            self._mqtt_section(f"fleetgen-{spec.device_id}", spec.tls),
            "[telemetry]",
            f"sample_interval_s = {self.sample_interval_s}",
            f"publish_interval_s = {self.publish_interval_s}",
            "[board]",
            f"profile = {_toml_str(spec.board_profile)}",
            f"root = {_toml_str(spec.board_root)}",
            # several agents on one machine would share /run/fleetgen/agent.sock: each gets
            # its own socket, or none
            "[api]",
            f"socket = {_toml_str(spec.api_socket)}" if spec.api_socket else "enabled = false",
            "",
        ]))
        return path

    def _spawn(self, module: str, args: list[str], log_name: str,
               env_extra: tuple[tuple[str, str], ...] = ()) -> subprocess.Popen[bytes]:
        log_path = self.workdir / "logs" / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, **dict(env_extra)}
        with open(log_path, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)

    def log_text(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, name: str, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never logged {text!r}")
            time.sleep(0.05)

    def start_controller(self, config: Path | None = None) -> None:
        """`fleetgen serve` on `config` (default: the one `controller_config` writes)."""
        path = config or self.controller_config()
        self.controller = self._spawn("controller", ["serve", "--config", str(path)], "controller.log")

    def start_agent(self, spec: DeviceSpec) -> None:
        self.agents[spec.device_id] = self._spawn(
            "agent", ["run", "--config", str(self.agent_config(spec))], f"{spec.device_id}.log", spec.env
        )

    def signal_agent(self, device_id: str, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(device_id)
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def alive(self) -> dict[str, bool]:
        procs = {"controller": self.controller, **self.agents}
        return {name: p is not None and p.poll() is None for name, p in procs.items()}

    def devices(self) -> list[DeviceView]:
        store = Store(self.db_url)
        try:
            return store.devices()
        finally:
            store.close()

    def wait_for(self, predicate: Callable[[list[DeviceView]], bool], timeout: float) -> list[DeviceView]:
        deadline = time.monotonic() + timeout
        devices: list[DeviceView] = []
        while time.monotonic() < deadline:
            dead = [name for name, ok in self.alive().items() if not ok]
            if dead:
                tail = "\n".join(self.log_text(dead[0]).splitlines()[-5:])
                raise TimeoutError(f"{dead[0]} exited while waiting; its log ends:\n{tail}")
            devices = self.devices()
            if predicate(devices):
                return devices
            time.sleep(0.1)
        raise TimeoutError(f"fleet did not reach the expected state in {timeout}s: {devices}")

    def stop(self) -> None:
        for proc in [*self.agents.values(), self.controller]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.agents.values(), self.controller]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents.clear()
        self.controller = None
