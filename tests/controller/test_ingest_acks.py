"""The ingest acknowledges a QoS 1 message only after its batch is committed (issue 11, item
5), against a real Mosquitto: a batch the database refuses stays unacknowledged, the broker
delivers it again to the next session, and it is stored exactly once. And the broker may send
many more than Mosquitto's default 20 unacknowledged messages (MQTT 5 Receive Maximum), or
the ingest would get 20 messages per commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, Status, TelemetryBatch, TelemetrySample, device_topic, encode
from controller.config import ControllerConfig
from controller.demo.brokers import Mosquitto
from controller.services.ingest import Ingestor
from controller.store import ApplyResult, Ingested, Store
from tests.controller.fleetworld import wait_until

pytestmark = pytest.mark.timeout(120)

MESSAGES = 60  # three times what Mosquitto sends unacknowledged by default
SAMPLES = 5


class RefusingStore(Store):
    """A store whose database refuses every write (it is away), remembering what it was given."""

    attempts: list[int]

    def apply(self, batch: Sequence[Ingested]) -> ApplyResult:
        self.attempts.append(sum(isinstance(i.message, TelemetryBatch) for i in batch))
        raise OSError("database is away")


def config(tmp_path: Path, broker: Mosquitto) -> ControllerConfig:
    return ControllerConfig(state_dir=str(tmp_path), mqtt=MqttSettings(
        url=broker.url, client_id="fleetgen-ingest-test", keepalive=5, reconnect_min_s=0.2, reconnect_max_s=1.0))


def publish_telemetry(broker: Mosquitto) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ack-test-device", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = []
        now = time.time()
        for m in range(MESSAGES):
            batch = TelemetryBatch(device_id="d1", samples=[
                TelemetrySample(seq=m * SAMPLES + k, ts=now, cpu_pct=1.0, mem_used_mb=1.0, mem_total_mb=2.0,
                                power_w=3.0) for k in range(SAMPLES)])
            infos.append(client.publish(device_topic("d1", Channel.TELEMETRY), encode(batch), qos=1))
        for info in infos:
            info.wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_refused_batch_is_not_acknowledged_and_arrives_again_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    good = Store(url)
    good.apply([Ingested("d1", time.time(), Status(state="online", ts=time.time()))])
    refusing = RefusingStore(url)
    refusing.attempts = []
    first = Ingestor(config(tmp_path, mosquitto), refusing)
    first.start()
    assert first.link.wait_connected(10)
    first.link.wait_subscribed()
    publish_telemetry(mosquitto)
    # All of them reach us before any is acknowledged: the broker honours Receive Maximum.
    wait_until(f"{MESSAGES} messages unacknowledged in the inbox", lambda: first.inbox.qsize() >= MESSAGES, 30)
    runner = threading.Thread(target=first.run)
    runner.start()
    wait_until("a refused write", lambda: len(refusing.attempts) >= 2, 30)
    first.stop()
    runner.join(15)
    assert not runner.is_alive()
    assert refusing.attempts[0] == MESSAGES and set(refusing.attempts) == {MESSAGES}  # the same batch, retried
    assert good.telemetry_count("d1") == 0

    # The next session (same identity, as after a restart) gets them again from the broker.
    second = Ingestor(config(tmp_path, mosquitto), good)
    second.start()
    runner = threading.Thread(target=second.run)
    runner.start()
    try:
        wait_until("every sample stored", lambda: good.telemetry_count("d1") >= MESSAGES * SAMPLES, 30)
    finally:
        second.stop()
        runner.join(15)
    assert good.telemetry_count("d1") == MESSAGES * SAMPLES  # once each
    refusing.close()
    good.close()
