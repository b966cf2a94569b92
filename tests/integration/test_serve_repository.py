"""`fleetgen serve` with a repository answers the agents' metadata requests over MQTT,
and refuses a folder that is not a repository with a one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.mqtt.link import MqttLink
from agent.mqtt.settings import MqttSettings
from agent.trust.fetch import REPOSITORY_URL
from agent.trust.mqtt_fetcher import MqttFetcher
from controller.cli import main as fleetgen
from controller.demo.brokers import Mosquitto
from controller.demo.fleetproc import FleetProcesses


def test_serve_answers_metadata_requests(mosquitto: Mosquitto, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    pp = tmp_path / "pass"
    pp.write_text("correct horse\n")
    assert fleetgen(["keys", "init", "--repo", str(repo), "--passphrase-file", str(pp)]) == 0
    fleet = FleetProcesses(tmp_path / "fleet", mosquitto.url, repository=repo)
    fleet.start_controller()
    link = MqttLink.open(MqttSettings(url=mosquitto.url))
    try:
        fleet.wait_log("controller", "connected to")
        link.wait_subscribed()
        fetcher = MqttFetcher(link, "dev-q")
        root = fetcher.download_bytes(REPOSITORY_URL + "metadata/1.root.json", 1 << 20)
        assert root == (repo / "metadata" / "1.root.json").read_bytes()
    finally:
        link.stop()
        fleet.stop()


def test_serve_refuses_a_folder_that_is_not_a_repository(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "serve", "--repo", str(tmp_path), "--state-dir", str(tmp_path / "s"),
         "--broker", "mqtt://127.0.0.1:1"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and "repository:" in out.stderr and "Traceback" not in out.stderr, out.stderr
