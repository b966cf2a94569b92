"""Spool rows leave when the controller confirms storing them (`dev/{id}/stored`), not on the
broker's PUBACK: a SIGKILLed Mosquitto loses messages it acknowledged (ADR 0091). Against a
real Mosquitto; a plain MQTT client plays the controller, so each step is ours to order."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.config import AgentConfig, SpoolSettings, TelemetrySettings
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, Event, Stored, decode, device_topic, encode
from controller.demo.brokers import Mosquitto
from tests.support.mqtt import close, subscribed_client

pytestmark = pytest.mark.timeout(120)
DEVICE = "conf-1"


class FakeController:
    """Sees the device's events; confirms them only when told to."""

    def __init__(self, broker: Mosquitto) -> None:
        self.copies: Counter[int] = Counter()  # event seq -> copies seen
        self.changed = threading.Condition()
        self.client = subscribed_client(broker.port, "fake-controller", device_topic(DEVICE, Channel.EVENTS),
                                        self._on_message)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        event = decode(Channel.EVENTS, m.payload)
        assert isinstance(event, Event)
        with self.changed:
            self.copies[event.seq] += 1
            self.changed.notify_all()

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout), what

    def confirm(self, seqs: list[int]) -> None:
        self.client.publish(device_topic(DEVICE, Channel.STORED),
                            encode(Stored(events=[(s, s) for s in seqs])), qos=1).wait_for_publish(10)

    def close(self) -> None:
        close(self.client)


@pytest.fixture
def controller(mosquitto: Mosquitto) -> Iterator[FakeController]:
    fake = FakeController(mosquitto)
    yield fake
    fake.close()


def make_agent(tmp_path: Path, broker: Mosquitto, confirm_timeout_s: float) -> Agent:
    return Agent(AgentConfig(
        device_id=DEVICE, state_dir=str(tmp_path / "state"),
        mqtt=MqttSettings(url=broker.url, keepalive=5, reconnect_min_s=0.1, reconnect_max_s=0.5),
        telemetry=TelemetrySettings(sample_interval_s=3600, publish_interval_s=3600),
        spool=SpoolSettings(confirm_timeout_s=confirm_timeout_s)))


def turn_until(agent: Agent, what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Run the daemon's inbox by hand until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        try:
            agent.handle(agent.inbox.get(timeout=0.1))
        except queue.Empty:
            agent.pump()


def spooled_events(agent: Agent) -> list[int]:
    return [decode(Channel.EVENTS, r.payload).seq for r in agent.spool.oldest("event", 1000)]  # type: ignore[attr-defined]


def test_an_acknowledged_event_stays_until_the_controller_confirms_it(
        tmp_path: Path, mosquitto: Mosquitto, controller: FakeController) -> None:
    agent = make_agent(tmp_path, mosquitto, confirm_timeout_s=3600)
    agent.start()
    try:
        turn_until(agent, "agent.started delivered", lambda: bool(controller.copies))
        agent.link.flush(10)  # the broker acknowledged it
        agent.pump()  # where a PUBACK used to release rows
        seqs = sorted(controller.copies)
        assert spooled_events(agent) == seqs
        controller.confirm(seqs)
        turn_until(agent, "confirmed rows leave the spool", lambda: not spooled_events(agent))
        assert agent.stats.confirmed == len(seqs)
        assert agent.stats.resent == 0
    finally:
        agent.stop()
        agent.shutdown()


def test_an_unconfirmed_event_is_sent_again_when_its_confirmation_is_overdue(
        tmp_path: Path, mosquitto: Mosquitto, controller: FakeController) -> None:
    agent = make_agent(tmp_path, mosquitto, confirm_timeout_s=0.5)
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        controller.wait("an event sent twice", lambda: any(n >= 2 for n in controller.copies.values()))
        assert agent.stats.resent >= 1
        controller.confirm(sorted(controller.copies))
        deadline = time.monotonic() + 30
        while spooled_events(agent):
            assert time.monotonic() < deadline, "confirmed rows stayed in the spool"
            time.sleep(0.02)
    finally:
        agent.stop()
        runner.join(15)


def test_a_broker_restart_sends_everything_unconfirmed_at_once(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    # A confirmation timeout of an hour: only the reconnection can make the event go again.
    agent = make_agent(tmp_path, mosquitto, confirm_timeout_s=3600)
    agent.start()
    try:
        turn_until(agent, "connected", lambda: agent.link.connected)
        agent.link.flush(10)
        before = agent.stats.resent
        mosquitto.stop(kill=True)
        mosquitto.start()
        turn_until(agent, "unconfirmed events sent again after the restart", lambda: agent.stats.resent > before)
        assert spooled_events(agent), "nothing was confirmed: the rows are all still there"
    finally:
        agent.stop()
        agent.shutdown()
