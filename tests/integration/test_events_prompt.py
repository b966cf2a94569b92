"""Events leave at once; samples keep their publish interval. A rollout waits on each
device's `update.committed`: with the default 30 s interval, an event that waited for the
next telemetry batch made every wave 30 s slower."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, TelemetrySettings
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, Event, Stored, decode, device_topic, encode
from controller.demo.brokers import Mosquitto


def test_an_event_leaves_without_waiting_for_the_next_telemetry_batch(mosquitto: Mosquitto, tmp_path: Path) -> None:
    seen: list[str] = []
    got_event, subscribed = threading.Event(), threading.Event()

    def on_message(client: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        seen.append(m.topic)
        if m.topic == device_topic("ev-1", Channel.EVENTS):
            # The watcher confirms storage as the controller would, so events leave the spool.
            event = decode(Channel.EVENTS, m.payload)
            assert isinstance(event, Event)
            client.publish(device_topic("ev-1", Channel.STORED), encode(Stored(events=[(event.seq, event.seq)])), 1)
            if event.kind == "test.ping":
                got_event.set()

    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv5)
    watcher.on_message = on_message
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("fleetgen/v1/dev/ev-1/#", qos=1)
    watcher.loop_start()
    assert subscribed.wait(30)
    # An hour between batches: only an event that does not wait for one can arrive.
    config = AgentConfig(device_id="ev-1", state_dir=str(tmp_path / "state"),
                         mqtt=MqttSettings(url=mosquitto.url),
                         telemetry=TelemetrySettings(sample_interval_s=3600, publish_interval_s=3600))
    agent = Agent(config)
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        assert agent.link.wait_connected(30)
        # The agent's own start-up events gone (confirmed): nothing else is in flight that
        # would make the loop send, so only the emit itself can.
        deadline = time.monotonic() + 30
        while agent.spool.oldest("event", 1, set()):
            assert time.monotonic() < deadline, "start-up events not confirmed"
            time.sleep(0.02)
        got_event.clear()
        agent.emit("test.ping")
        assert got_event.wait(30), seen
    finally:
        agent.stop()
        runner.join(15)
        watcher.loop_stop()
        watcher.disconnect()
