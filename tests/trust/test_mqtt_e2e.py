"""End to end over a real Mosquitto: controller responder ⇄ broker ⇄ agent fetcher.

The controller retains the signed desired state on `dev/{id}/desired`; the agent gets it,
refreshes TUF metadata and downloads the bundle in chunks over `dev/{id}/req`/`resp`.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.mqtt.link import MqttLink
from agent.mqtt.settings import MqttSettings
from agent.protocol.messages import Request
from agent.protocol.topics import CHANNELS, Channel, device_topic
from agent.trust.errors import TransportError, TrustError
from agent.trust.fetch import DownloadPolicy
from agent.trust.mqtt_fetcher import MqttFetcher
from controller.demo.brokers import Mosquitto
from controller.director import publish_desired
from controller.services.responder import RepositoryResponder
from tests.trust.conftest import DEVICE, World
from tests.trust.fakes import Tap

KiB = 1024
POLICY = DownloadPolicy(chunk_size=128 * KiB, window=4, request_timeout_s=2, grace_s=5, deadline_s=60)


@pytest.fixture
def controller(mosquitto: Mosquitto) -> Iterator[Tap]:
    t = MqttLink.open(MqttSettings(url=mosquitto.url), client_id="fleetgen-controller")
    yield Tap(t)
    t.stop()


@pytest.fixture
def agent_link(mosquitto: Mosquitto) -> Iterator[MqttLink]:
    t = MqttLink.open(MqttSettings(url=mosquitto.url), client_id=f"agent-{DEVICE}")
    yield t
    t.stop()


def _serve(controller: Tap, root: Path) -> RepositoryResponder:
    responder = RepositoryResponder(controller, root)
    responder.start()
    controller.inner.wait_subscribed()  # type: ignore[attr-defined]
    return responder


def _desired(agent_link: MqttLink) -> queue.Queue[bytes]:
    inbox: queue.Queue[bytes] = queue.Queue(maxsize=8)
    agent_link.subscribe(device_topic(DEVICE, Channel.DESIRED), lambda t, p: inbox.put_nowait(p))
    agent_link.wait_subscribed()
    return inbox


def test_signed_update_over_mosquitto(world: World, controller: Tap, agent_link: MqttLink) -> None:
    world.publish("1.0.0", size=900 * KiB)  # several chunks, a window of them in flight
    responder = _serve(controller, world.repo.path)
    try:
        inbox = _desired(agent_link)
        publish_desired(controller, DEVICE, world.desired("1.0.0"))
        envelope = inbox.get(timeout=10)
        device = world.device(fetcher=MqttFetcher(agent_link, DEVICE, POLICY))
        result = device.apply_desired(envelope)
        assert result.changed and "tiny-1.0.0" in device.store.current().name  # type: ignore[union-attr]
    finally:
        responder.stop()
    frames = [p for t, p in controller.sent if t.endswith("/resp")]
    assert frames and max(map(len, frames)) <= CHANNELS[Channel.RESP].max_bytes


def test_tampered_repository_behind_the_broker_is_refused(
    world: World, controller: Tap, agent_link: MqttLink
) -> None:
    world.publish("1.0.0", size=300 * KiB)
    served = world.target_file("1.0.0")
    data = bytearray(served.read_bytes())
    data[-5000] ^= 0xFF
    served.write_bytes(bytes(data))
    responder = _serve(controller, world.mirror)  # serves the attacker's copy
    try:
        device = world.device(fetcher=MqttFetcher(agent_link, DEVICE, POLICY))
        with pytest.raises(TrustError) as info:
            device.apply_desired(world.desired("1.0.0"))
        assert info.value.check == "hash"
        assert device.store.current() is None
        assert not list(device.paths.downloads_dir.iterdir())
    finally:
        responder.stop()


def test_interrupted_download_resumes_from_the_partial_file(
    world: World, controller: Tap, agent_link: MqttLink
) -> None:
    bundle = world.publish("1.0.0", size=1200 * KiB)
    responder = _serve(controller, world.repo.path)
    try:
        # The link dies after a few chunks of the bundle: the transfer fails, the
        # partial file stays; the next attempt asks only for the rest.
        budget = {"chunks": 4}

        def cut(topic: str, payload: bytes) -> bool:
            req = msgspec.json.decode(payload, type=Request)
            if not req.path.startswith("targets/"):
                return False
            budget["chunks"] -= 1
            return budget["chunks"] < 0

        flaky = Tap(agent_link, drop=cut)
        policy = DownloadPolicy(chunk_size=128 * KiB, window=2, request_timeout_s=0.3, max_retries=1, grace_s=5)
        device = world.device(fetcher=MqttFetcher(flaky, DEVICE, policy))
        with pytest.raises(TransportError) as info:  # a failure to retry, not a refusal
            device.apply_desired(world.desired("1.0.0"))
        assert info.value.check == "transport" and not isinstance(info.value, TrustError)
        parts = list(device.paths.downloads_dir.iterdir())
        assert len(parts) == 1 and 0 < parts[0].stat().st_size < bundle.stat().st_size
        have = parts[0].stat().st_size

        again = Tap(agent_link)
        device.fetcher = MqttFetcher(again, DEVICE, POLICY)
        assert device.apply_desired(world.desired("1.0.0")).changed
        offsets = [
            msgspec.json.decode(p, type=Request).offset
            for t, p in again.sent
            if b'"targets/' in p
        ]
        assert min(offsets) == have
    finally:
        responder.stop()
