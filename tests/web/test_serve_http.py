"""`fleetgen serve --http`: the web face of a running controller shows what real agents'
documents, through a real Mosquitto and the real ingest, put in the store."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.brokers import Mosquitto
from tests.web import fleet
from tests.web.client import Api
from tests.web.conftest import wait_until
from tests.web.mqttfleet import ServedController, link_for, publish


@pytest.fixture
def served(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServedController]:
    c = ServedController(tmp_path / "controller", mosquitto.url)
    c.start()
    yield c
    assert c.stop() == 0


def test_documents_from_the_broker_reach_the_api(served: ServedController, mosquitto: Mosquitto) -> None:
    import time

    now = time.time()
    devices = fleet.devices(3, prefix="mq")
    link = link_for(mosquitto.url)
    try:
        publish(link, fleet.state(devices[0], now))  # retained: proves the ingest is subscribed
        wait_until(lambda: served.get("/api/v1/devices")["total"] == 1, what="the first device")  # type: ignore[index]
        for d in devices:
            publish(link, [*fleet.state(d, now), *fleet.history(d, now, 300, 10), *fleet.events(d, now)])
        wait_until(lambda: all(
            len(served.get(f"/api/v1/devices/{d.id}/events")["events"]) == 2  # type: ignore[index]
            and len(served.get(f"/api/v1/devices/{d.id}/telemetry?since={now - 400}")["t"]) == 30  # type: ignore[index]
            for d in devices), timeout=20, what="telemetry and events of every device")
    finally:
        link.stop()
    api = Api(served.url)
    body = api.get("/api/v1/devices?sort=id").json()
    assert [d["id"] for d in body["devices"]] == [d.id for d in devices]
    assert body["devices"][1]["board"] == "kria-kv260" and body["devices"][1]["power_w"] is not None
    metrics = api.get("/metrics").body.decode()
    assert "fleetgen_telemetry_samples_ingested_total 90.0" in metrics


def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "controller", "serve", "--state-dir", str(tmp_path), "--broker", mosquitto.url,
             "--http", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert f"http.listen: cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("listen", ["8080", "localhost:http", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_a_usage_error(tmp_path: Path, listen: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "serve", "--state-dir", str(tmp_path), "--broker", "mqtt://127.0.0.1:1",
         "--http", listen], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "http.listen:" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_http_section_in_the_config_file(tmp_path: Path) -> None:
    from controller.config import load_config

    path = tmp_path / "controller.toml"
    path.write_text('[http]\nlisten = "0.0.0.0:9000"\nopen_reads_on_localhost = false\n')
    config = load_config(path, env={})
    assert config.http.listen == "0.0.0.0:9000" and not config.http.open_reads_on_localhost
    path.write_text('[http]\nlisten_on = "x"\n')
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="listen_on"):
        load_config(path, env={})
