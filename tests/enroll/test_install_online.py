"""End to end: `fleetgen serve` with its enrollment endpoint, Mosquitto on the generated
configuration, `fleetgen device add`, `fleetgen-agent install`, then the installed agent
(its unit's ExecStart, its agent.toml, its enrolled identity) comes online at the controller."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.brokers import free_port, wait_for_port
from controller.store import Store
from tests.enroll.conftest import GeneratedBroker

BIN = Path(sys.executable).parent
VENV = str(BIN.parent)


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def controller(tmp_path: Path, pki: Path, repo: Path,
               fleet_broker: GeneratedBroker) -> Iterator[tuple[Path, int, Proc]]:
    enroll_port = free_port()
    config = tmp_path / "controller.toml"
    config.write_text("\n".join([
        f'state_dir = "{tmp_path / "controller"}"',
        f'database_url = "sqlite:///{tmp_path / "controller.db"}"',
        f'repository = "{repo}"',
        "[mqtt]",
        f'url = "mqtts://127.0.0.1:{fleet_broker.port}"',
        f'ca_file = "{pki / "ca.pem"}"',
        f'cert_file = "{pki / "controller.pem"}"',
        f'key_file = "{pki / "controller.key"}"',
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 1.0",
        "[enroll]",
        f'listen = "127.0.0.1:{enroll_port}"',
        f'broker_url = "mqtts://127.0.0.1:{fleet_broker.port}"',
        f'pki_dir = "{pki}"',
        "",
    ]))
    proc = Proc([sys.executable, "-m", "controller", "serve", "--config", str(config)], tmp_path / "controller.log")
    try:
        assert wait_for_port(enroll_port, timeout=30), proc.log()
        yield config, enroll_port, proc
    finally:
        proc.stop()


def test_installed_agent_enrolls_and_comes_online(controller: tuple[Path, int, Proc], tmp_path: Path,
                                                  fleet_broker: GeneratedBroker) -> None:
    config, enroll_port, ctl = controller
    add = subprocess.run([sys.executable, "-m", "controller", "device", "add", "e2e-1", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert add.returncode == 0, add.stderr
    token = add.stdout.strip()
    root = tmp_path / "device"
    inst = subprocess.run([str(BIN / "fleetgen-agent"), "install", "--controller", f"https://127.0.0.1:{enroll_port}",
                           "--token", token, "--root", str(root), "--venv", VENV, "--board", "generic-x86_64"],
                          capture_output=True, text=True, timeout=120)
    assert inst.returncode == 0, inst.stderr + ctl.log()

    # Run what the installed unit runs. The staged files name the device's own paths
    # (/etc/fleetgen, /var/lib/fleetgen); the environment maps them into the staging root.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(root / "etc/systemd/system/fleetgen-agent.service")
    argv = [a.replace("/etc/fleetgen/", f"{root}/etc/fleetgen/") for a in shlex.split(unit["Service"]["ExecStart"])]
    state = root / "var/lib/fleetgen"
    env = {**os.environ, "FLEETGEN_STATE_DIR": str(state), "FLEETGEN_MQTT_CA_FILE": str(state / "pki/ca.pem"),
           "FLEETGEN_MQTT_CERT_FILE": str(state / "pki/e2e-1.pem"),
           "FLEETGEN_MQTT_KEY_FILE": str(state / "pki/e2e-1.key"), "FLEETGEN_TELEMETRY_SAMPLE_INTERVAL_S": "0.5",
           "FLEETGEN_TELEMETRY_PUBLISH_INTERVAL_S": "1"}
    agent = Proc(argv, tmp_path / "agent.log", env)
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}", create=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            online = {d.id: d for d in store.devices() if d.online}
            if "e2e-1" in online and store.telemetry_count("e2e-1") > 0:
                break
            assert time.monotonic() < deadline, agent.log()[-3000:] + ctl.log()[-3000:] + fleet_broker.log()[-2000:]
            assert agent.proc.poll() is None, agent.log()
            time.sleep(0.1)
        assert online["e2e-1"].board == "generic-x86_64"
    finally:
        agent.stop()
        store.close()
