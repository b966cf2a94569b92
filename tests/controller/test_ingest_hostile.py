"""Nothing a device sends kills the controller (issue 11, "Bad input"): `fleetgen serve` on a
real Mosquitto gets malformed, impossible and misaddressed documents on every channel it
ingests, drops and logs each one, and goes on storing the good ones."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol import Channel, Status, TelemetryBatch, TelemetrySample, device_topic, encode
from controller.demo.brokers import Mosquitto
from tests.controller.fleetworld import FleetWorld, make_repo, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def world(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[FleetWorld]:
    w = FleetWorld(tmp_path, mosquitto.url, make_repo(tmp_path, versions=("1.0.0",)))
    yield w
    w.stop()


def sample(seq: int, ts: float, **kw: object) -> dict[str, object]:
    return {"seq": seq, "ts": ts, "cpu_pct": 10.0, "mem_used_mb": 1.0, "mem_total_mb": 2.0, **kw}


def telemetry_doc(device: str, *samples: dict[str, object]) -> bytes:
    return json.dumps({"schema": 1, "device_id": device, "samples": list(samples)}).encode()


def test_hostile_documents_are_dropped_and_the_good_ones_still_stored(world: FleetWorld) -> None:
    world.start_controller()
    wait_until("controller connected", lambda: "connected to" in world.log("controller"), 60,
               alive=world.check_alive)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", int(world.broker_url.rsplit(":", 1)[1]))
    client.loop_start()
    now = time.time()

    def send(topic: str, payload: bytes, retain: bool = False) -> None:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=10)

    try:
        send(device_topic("h1", Channel.STATUS), encode(Status(state="online", ts=now)), retain=True)
        wait_until("h1 registered", lambda: "h1" in world.online(), 30, alive=world.check_alive)
        tele = device_topic("h1", Channel.TELEMETRY)
        hostile = [
            (tele, b"not json at all"),
            (tele, b"\xff\xfe\x00garbage"),
            (tele, b"[]"),
            (tele, telemetry_doc("h1", sample(1, now, power_w=-5.0))),  # negative watts
            (tele, telemetry_doc("h1", sample(2, now)).replace(b'"cpu_pct": 10.0', b'"cpu_pct": NaN')),
            (tele, telemetry_doc("h1", sample(3, now + 86400))),  # a day in the future
            (tele, telemetry_doc("h2", sample(4, now))),  # says it is another device
            (tele, telemetry_doc("h1")),  # no samples
            (tele, b"{" * 100_000),  # deep nesting
            (tele, b"x" * (2 * 1024 * 1024)),  # oversized
            (device_topic("h1", Channel.EVENTS), b'{"schema":1,"device_id":"h1","seq":-1,"ts":1,"kind":"x"}'),
            (device_topic("h1", Channel.REPORTED), b'{"schema":99}'),
            (device_topic("h1", Channel.STATUS), b'{"state":"exploded"}'),
            ("fleetgen/v1/dev/NOT A VALID ID/telemetry", telemetry_doc("h1", sample(5, now))),
            (device_topic("ghost", Channel.TELEMETRY), telemetry_doc("ghost", sample(6, now))),  # never registered
        ]
        for topic, payload in hostile:
            send(topic, payload)
        good = TelemetryBatch(device_id="h1", samples=[
            TelemetrySample(seq=10, ts=now, cpu_pct=5.0, mem_used_mb=1.0, mem_total_mb=2.0, power_w=4.0)])
        send(tele, encode(good))
        wait_until("the good sample stored", lambda: world.query(lambda s: s.telemetry_count("h1")) >= 1, 30,
                   alive=world.check_alive)
    finally:
        client.disconnect()
        client.loop_stop()
    world.check_alive()
    assert world.query(lambda s: s.telemetry_count("h1")) == 1  # only seq 10
    assert world.query(lambda s: s.telemetry_count("ghost")) == 0
    assert "ghost" not in {d.id for d in world.query(lambda s: s.devices())}
    log = world.log("controller")
    assert "Traceback" not in log
    assert log.count("refused message on") >= 10, log[-3000:]
