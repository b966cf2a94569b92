"""Requests keep being served while an update downloads, and at the switch a request in flight
finishes on the old model (issue 10, serving).

The daemon runs in this process with its real parts: the MQTT link to a real Mosquitto, the
update worker, the API on its socket (agent/cli/run.py's `_start_api`). The repository is
served over the broker by the controller's responder, which holds every bundle chunk after
the first until the test lets it go: the download is in progress for as long as the test
needs, and the test waits on the `update.downloading` event the agent publishes. The
generation knobs are the tests' Gate, so a request can be held mid-generation across the
switch.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import msgspec
import pytest

from agent.mqtt.link import MqttLink
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, device_topic, encode
from agent.protocol.messages import Request
from controller.demo.brokers import Mosquitto
from controller.services.responder import RepositoryResponder
from tests.api.conftest import WAIT_S, Gate, wait_for
from tests.api.processes import install
from tests.support.update_world import DEVICE, INT4, INT8, UpdateWorld, variant

PROMPT = {"prompt": "It is a truth universally acknowledged", "max_tokens": 12, "temperature": 0,
          "ignore_eos": True}


class HeldResponder(RepositoryResponder):
    """Answers metadata and a bundle's first chunk; holds later chunks until `release()`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = threading.Event()

    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        request = msgspec.json.decode(payload, type=Request)
        if request.path.startswith("targets/") and request.offset > 0:
            self.go.wait(2 * WAIT_S)
        return super().handle(topic, payload)

    def release(self) -> None:
        self.go.set()


@dataclass
class World:
    update: UpdateWorld
    old: str  # the model id served before the update
    new: str
    target: str  # the new bundle's file name


@pytest.fixture
def world(tmp_path: Path) -> World:
    update = UpdateWorld(tmp_path)
    models = tmp_path / "models"
    old = variant(models, "austen-old", "1.0.0", INT8)
    new = variant(models, "austen-new", "2.0.0", INT4)
    install(old, update.state, tmp_path)  # what the device serves when the test begins
    return World(update, "austen-old", "austen-new", update.publish(new))


@pytest.fixture
def controller(mosquitto: Mosquitto) -> Iterator[MqttLink]:
    link = MqttLink.open(MqttSettings(url=mosquitto.url), client_id="fleetgen-controller")
    yield link
    link.stop()


def test_served_while_downloading_and_in_flight_finishes_on_the_old_model(
    world: World, mosquitto: Mosquitto, controller: MqttLink, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.board import open_board
    from agent.cli.run import _start_api
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.telemetry import Sampler

    responder = HeldResponder(controller, world.update.repo.path)
    responder.start()
    events: queue.Queue[bytes] = queue.Queue()
    controller.subscribe(device_topic(DEVICE, Channel.EVENTS), lambda _t, p: events.put(p))
    controller.wait_subscribed()

    sock_dir = Path(tempfile.mkdtemp(prefix="fgup-"))
    sock = sock_dir / "agent.sock"
    config = msgspec.convert({
        "device_id": DEVICE, "state_dir": str(world.update.state), "mqtt": {"url": mosquitto.url},
        "telemetry": {"sample_interval_s": 0.2, "publish_interval_s": 0.2},
        "api": {"socket": str(sock), "switch_wait_s": 30.0},
    }, AgentConfig)
    gate = Gate()
    monkeypatch.setattr(Agent, "knobs", property(lambda self: gate))  # generation the test can hold
    sampler = Sampler()
    agent = Agent(config, sampler=sampler)
    api = _start_api(agent, config, sampler, open_board(config.board))
    agent.start()
    loop = threading.Thread(target=agent.run, name="test-agent")
    loop.start()
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=WAIT_S)
    try:
        wait_for(lambda: http.get("/health").status_code == 200, "the installed bundle to load")
        before = http.post("/v1/completions", json=PROMPT).json()
        assert before["model"] == world.old

        controller.publish(device_topic(DEVICE, Channel.DESIRED), encode(world.update.desired(world.target)),
                           qos=1, retain=True)
        while b"update.downloading" not in events.get(timeout=WAIT_S):
            pass  # the first chunk is in; the rest are held: the download is in progress
        assert http.get("/fleetgen/status").json()["update_phase"] == "downloading"
        for _ in range(3):  # answered meanwhile, by the old model
            r = http.post("/v1/completions", json=PROMPT)
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == before["choices"][0]["text"]
        with http.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": True}) as s:
            assert s.status_code == 200 and s.read().endswith(b"data: [DONE]\n\n")
        assert http.get("/fleetgen/status").json()["update_phase"] == "downloading"  # still

        # a request in flight when the new bundle takes over: held after its second token
        gate.hold(after_steps=2)
        results: list[dict[str, Any]] = []

        def request() -> None:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost",
                              timeout=2 * WAIT_S) as c:
                results.append(c.post("/v1/completions", json=PROMPT).json())

        in_flight = threading.Thread(target=request)
        in_flight.start()
        assert gate.held.wait(WAIT_S)
        responder.release()  # the download completes; unpack, trial, commit, then the API switches
        wait_for(lambda: api.host.switches == 1 and api.host.ready, "the API to switch to the new bundle",
                 timeout=120)
        assert [m.id for m in api.host.models] == [world.new]
        assert results == []  # still held, on the old model's queue
        gate.release()
        in_flight.join(WAIT_S)
        assert results[0]["model"] == world.old  # finished on the old model, whole
        assert results[0]["choices"][0]["text"] == before["choices"][0]["text"]
        assert results[0]["usage"]["completion_tokens"] == PROMPT["max_tokens"]
        after = http.post("/v1/completions", json=PROMPT).json()
        assert after["model"] == world.new
        assert agent.state.active_bundle == world.target.removesuffix(".fgb")
    finally:
        responder.release()
        gate.release()
        http.close()
        agent.stop()
        loop.join(WAIT_S)
        api.stop()
        api.host.close()
        responder.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
