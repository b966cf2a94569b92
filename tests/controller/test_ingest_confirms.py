"""After a batch is committed the ingest tells each device which seqs it stored, on
`dev/{id}/stored` (ADR 0091): the device's spool lets them go only then. Real Mosquitto, real
SQLite store; plain MQTT clients play the devices."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.mqtt.settings import MqttSettings
from agent.protocol import (
    Channel,
    Event,
    Status,
    Stored,
    TelemetryBatch,
    TelemetrySample,
    decode,
    device_topic,
    encode,
    parse_topic,
)
from agent.unconfirmed import expand
from controller.config import ControllerConfig
from controller.demo.brokers import Mosquitto
from controller.services.ingest import FUTURE_SLACK_S, Ingestor
from controller.store import Store
from tests.support.mqtt import close, subscribed_client

pytestmark = pytest.mark.timeout(120)


class Devices:
    """One client for the test's devices: publishes as them, collects their confirmations."""

    def __init__(self, broker: Mosquitto) -> None:
        self.stored: dict[str, list[Stored]] = {}
        self.arrived = threading.Condition()
        self.client = subscribed_client(broker.port, "devices", "fleetgen/v1/dev/+/stored", self._on_message)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        device_id, channel = parse_topic(m.topic)
        stored = decode(channel, m.payload, device_id)
        assert isinstance(stored, Stored)
        with self.arrived:
            self.stored.setdefault(device_id, []).append(stored)
            self.arrived.notify_all()

    def send(self, device_id: str, channel: Channel, payload: bytes) -> None:
        self.client.publish(device_topic(device_id, channel), payload, qos=1).wait_for_publish(10)

    def seqs(self, device_id: str) -> tuple[set[int], set[int]]:
        got = self.stored.get(device_id, [])
        return ({s for m in got for s in expand(m.events)}, {s for m in got for s in expand(m.samples)})

    def wait(self, device_id: str, events: set[int], samples: set[int], timeout: float = 30) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.seqs(device_id) == (events, samples), timeout), \
                self.seqs(device_id)


@pytest.fixture
def running(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[Ingestor, Devices]]:
    config = ControllerConfig(state_dir=str(tmp_path), mqtt=MqttSettings(url=mosquitto.url, client_id="ingest-conf"))
    ingestor = Ingestor(config, Store(f"sqlite:///{tmp_path / 'c.db'}"))
    ingestor.start()
    assert ingestor.link.wait_connected(10)
    ingestor.link.wait_subscribed()
    runner = threading.Thread(target=ingestor.run, daemon=True)
    runner.start()
    devices = Devices(mosquitto)
    yield ingestor, devices
    close(devices.client)
    ingestor.stop()
    runner.join(10)


def sample(seq: int, ts: float) -> TelemetrySample:
    return TelemetrySample(seq=seq, ts=ts, cpu_pct=1.0, mem_used_mb=1.0, mem_total_mb=2.0)


def test_stored_events_and_samples_are_confirmed_to_their_device(running: tuple[Ingestor, Devices]) -> None:
    ingestor, devices = running
    now = time.time()
    devices.send("d1", Channel.STATUS, encode(Status(state="online", ts=now)))
    devices.send("d1", Channel.EVENTS, encode(Event(device_id="d1", seq=7, ts=now, kind="agent.started")))
    # A sample from far in the future is refused for good: confirmed too, or it would come forever.
    devices.send("d1", Channel.TELEMETRY, encode(TelemetryBatch(device_id="d1", samples=[
        sample(1, now), sample(2, now), sample(3, now + 10 * FUTURE_SLACK_S), sample(5, now)])))
    devices.wait("d1", {7}, {1, 2, 3, 5})
    assert ingestor.dropped["future_timestamp"] == 1
    # Sent again (the device missed the confirmation): stored once, confirmed again.
    devices.send("d1", Channel.EVENTS, encode(Event(device_id="d1", seq=7, ts=now, kind="agent.started")))
    with devices.arrived:
        assert devices.arrived.wait_for(lambda: len(devices.stored["d1"]) >= 2 and
                                        devices.stored["d1"][-1].events == [(7, 7)], 30)
    assert len(ingestor.store.events("d1")) == 1


def test_telemetry_of_an_unregistered_device_is_not_confirmed(running: tuple[Ingestor, Devices]) -> None:
    _ingestor, devices = running
    now = time.time()
    devices.send("stranger", Channel.TELEMETRY, encode(TelemetryBatch(device_id="stranger", samples=[sample(1, now)])))
    devices.send("d2", Channel.STATUS, encode(Status(state="online", ts=now)))
    devices.send("d2", Channel.EVENTS, encode(Event(device_id="d2", seq=1, ts=now, kind="agent.started")))
    devices.wait("d2", {1}, set())  # confirmations leave in order: the stranger's would be in by now
    assert "stranger" not in devices.stored


def test_a_confirmation_too_wide_for_one_message_is_split(running: tuple[Ingestor, Devices]) -> None:
    """1,000 samples with gaps between all of them: 1,000 ranges, more than one `stored` holds."""
    _ingestor, devices = running
    now = time.time()
    seqs = set(range(0, 2000, 2))
    devices.send("d3", Channel.STATUS, encode(Status(state="online", ts=now)))
    batch = TelemetryBatch(device_id="d3", samples=[sample(s, now) for s in sorted(seqs)])
    devices.send("d3", Channel.TELEMETRY, encode(batch))
    devices.wait("d3", set(), seqs)
    assert len(devices.stored["d3"]) == 2
    assert all(len(m.samples) <= 800 for m in devices.stored["d3"])
