"""A signed model pushed to a running agent over a real broker, end to end:
keys → bundle → publish → `fleetgen serve --repo` → director → agent daemon verifies,
downloads over MQTT, installs, reports; a forged director document is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.protocol import Channel, Signature, SignedEnvelope, device_topic, encode
from agent.trust.dsse import DESIRED_PAYLOAD_TYPE
from controller.demo.brokers import Mosquitto
from controller.demo.fleetproc import DeviceSpec, FleetProcesses
from controller.store import Store
from tests.integration.test_fleet_mqtt import publish_once

MODEL = Path(__file__).resolve().parents[2] / "models" / "text" / "austen-3m-int8"


def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def events(fleet: FleetProcesses, device: str, kind: str, timeout: float) -> list:  # type: ignore[type-arg]
    store = Store(fleet.db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = store.events(device, kinds=[kind])
            if found:
                return found
            time.sleep(0.2)
        return []
    finally:
        store.close()


@pytest.mark.timeout(240)
def test_signed_model_pushed_installed_and_forgery_refused(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {"FLEETGEN_PASSPHRASE": "demo passphrase"}
    repo = tmp_path / "repo"
    bundle = tmp_path / "austen-3m-int8-1.0.0.fgb"
    for argv in (["controller", "keys", "init", "--repo", str(repo)],
                 ["controller", "bundle", "build", str(MODEL), "-o", str(bundle)],
                 ["controller", "bundle", "publish", str(bundle), "--repo", str(repo)]):
        out = run(*argv, env=env)
        assert out.returncode == 0, out.stderr
    fleet = FleetProcesses(tmp_path / "fleet", mosquitto.url, repository=repo)
    state = fleet.workdir / "agents" / "dev-u"
    out = run("agent", "provision", "--root", str(repo / "metadata" / "1.root.json"), "--state-dir", str(state),
              env=env)
    assert out.returncode == 0, out.stderr
    fleet.start_controller()
    try:
        fleet.start_agent(DeviceSpec("dev-u"))
        fleet.wait_for(lambda ds: any(d.id == "dev-u" and d.online for d in ds), timeout=20)

        out = run("controller", "director", "set", "dev-u", "--repo", str(repo), "--target", bundle.name,
                  "--broker", mosquitto.url, env=env)
        assert out.returncode == 0, out.stderr
        devices = fleet.wait_for(
            lambda ds: any(d.id == "dev-u" and d.active_bundle == "austen-3m-int8-1.0.0" for d in ds), timeout=90)
        assert devices
        [installed] = events(fleet, "dev-u", "update.installed", timeout=5)
        assert installed.details["name"] == "austen-3m-int8"
        assert (state / "current" / "model.onnx").is_file()

        # A director document signed by nobody the root knows: refused, model unchanged.
        forged = SignedEnvelope(payload_type=DESIRED_PAYLOAD_TYPE,
                                payload=b'{"schema":1,"device_id":"dev-u","version":99,"expires":9e9}',
                                signatures=[Signature("f" * 64, b"\x00" * 64)])
        publish_once(mosquitto.port, device_topic("dev-u", Channel.DESIRED), encode(forged), retain=True)
        refused = events(fleet, "dev-u", "update.refused", timeout=30)
        assert refused and refused[0].details["check"] == "signature", refused[0].details
        assert (state / "current").resolve().name.startswith("austen-3m-int8-1.0.0-")
        assert fleet.alive()["dev-u"]
    finally:
        fleet.stop()

    # Offline: broker gone, the installed model still generates.
    mosquitto.stop()
    out = run("agent", "generate", "--model", str(state / "current"), "--greedy", "--max-tokens", "12",
              "Tell me a story about summer", env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) >= 3
