"""1,000 random and malformed payloads on the agent's topics, through a real broker:
the agent refuses and logs each one and keeps serving."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, device_topic
from controller.demo.brokers import Mosquitto

VALID_ENVELOPE = {"payloadType": "application/vnd.fleetgen.desired+json", "payload": "e30=",
                  "signatures": [{"keyid": "k", "sig": "c2ln"}]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def broken_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope with one required field removed or given a wrong type."""
    doc = json.loads(json.dumps(VALID_ENVELOPE))
    key = draw(st.sampled_from(sorted(doc)))
    if draw(st.booleans()):
        del doc[key]
    else:
        doc[key] = draw(json_values.filter(lambda v: not isinstance(v, (str, list))))
    return json.dumps(doc).encode()


payloads = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    broken_envelopes(),
    st.just(b"{" * 70_000),                           # oversized
    st.just(json.dumps({**VALID_ENVELOPE, "payload": "!!"}).encode()),  # bad base64
)


@pytest.mark.timeout(240)
def test_thousand_malformed_payloads_are_refused_and_logged(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = AgentConfig(device_id="fuzz-1", state_dir=str(tmp_path / "state"),
                         mqtt=MqttSettings(url=mosquitto.url, keepalive=10))
    agent = Agent(config)
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    assert agent.link.wait_connected(10)
    sender = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sender.connect("127.0.0.1", mosquitto.port)
    sender.loop_start()
    # The agent's own SUBSCRIBEs are in force once a message round-trips on its link (no
    # sleeping "for the SUBSCRIBE"); the daemon counts a refusal only after logging it.
    agent.link.wait_subscribed(10)
    caplog.set_level(logging.WARNING, logger="agent.daemon")
    sent = 0

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(payload=payloads, channel=st.sampled_from([Channel.DESIRED, Channel.RESP]))
    def check(payload: bytes, channel: Channel) -> None:
        nonlocal sent
        before = agent.stats.refused
        sender.publish(device_topic("fuzz-1", channel), payload, qos=1).wait_for_publish(timeout=5)
        sent += 1
        deadline = time.monotonic() + 5
        while agent.stats.refused == before and time.monotonic() < deadline:
            time.sleep(0.0005)
        assert agent.stats.refused == before + 1, f"not refused: {payload[:80]!r} on {channel}"

    try:
        check()
        assert runner.is_alive()
        assert sent >= 1000
        refusals = [r for r in caplog.records if r.getMessage().startswith("refused message on")]
        assert len(refusals) == sent
        assert agent.stats.handler_errors == 0
        # Still serving: a well-formed message after the storm is accepted.
        good = json.dumps(VALID_ENVELOPE).encode()
        sender.publish(device_topic("fuzz-1", Channel.DESIRED), good, qos=1).wait_for_publish(timeout=5)
        deadline = time.monotonic() + 5
        while agent.latest_desired is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert agent.latest_desired is not None
    finally:
        sender.loop_stop()
        sender.disconnect()
        agent.stop()
        runner.join(10)
