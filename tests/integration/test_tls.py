"""mqtts:// with a client certificate per device; the broker maps the certificate to the
username and an ACL confines each device to its own subtree."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, device_topic
from controller.broker_config import BrokerLayout, render
from controller.demo.brokers import Mosquitto
from controller.pki import CertificateAuthority, IssuedCert


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, CertificateAuthority]]:
    """Mosquitto with the listener settings and ACL `fleetgen broker config` generates (the
    shipped systemd/mosquitto/ files are those with default paths: tests/enroll checks)."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    certs = tmp_path / "certs"
    server = ca.issue_server(["127.0.0.1", "localhost"], certs)
    (certs / "ca.pem").write_bytes(ca.cert_path.read_bytes())
    ca.write_crl([])
    (certs / "crl.pem").write_bytes(ca.crl_path.read_bytes())
    assert server.cert == certs / "server.pem"
    files = render(BrokerLayout(certs=PurePosixPath(certs)))
    (certs / "fleetgen.acl").write_text(files["fleetgen.acl"])
    keys = ("cafile", "certfile", "keyfile", "crlfile", "require_certificate", "use_identity_as_username",
            "allow_anonymous", "acl_file", "tls_version")
    lines = [line for line in files["fleetgen.conf"].splitlines() if line.startswith(keys)]
    assert len(lines) == len(keys)
    broker = Mosquitto(tmp_path / "broker", listener_conf="\n".join(lines))
    broker.start()
    yield broker, ca
    broker.stop()


def watch_all(broker: Mosquitto, ca: CertificateAuthority, cert: IssuedCert,
              client_id: str) -> tuple[paho.Client, list[str]]:
    """A TLS client with `cert` that subscribes to every fleetgen topic; returns what it sees
    once the SUBACK is in (what is published before it would be missed, not refused)."""
    seen: list[str] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(ca.cert_path), certfile=str(cert.cert), keyfile=str(cert.key))
    client.on_message = lambda c, u, m: seen.append(m.topic)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.subscribe("fleetgen/#", qos=1)
    client.loop_start()
    assert subscribed.wait(30), f"{client_id}: no SUBACK within 30 s"
    return client, seen


def wait_until(condition: Callable[[], bool], what: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_agent_connects_over_tls_and_acl_confines_it(tls_broker: tuple[Mosquitto, CertificateAuthority],
                                                     tmp_path: Path) -> None:
    broker, ca = tls_broker
    dev = ca.issue_device("tls-1", tmp_path / "dev")
    mqtt = MqttSettings(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=str(ca.cert_path),
                        cert_file=str(dev.cert), key_file=str(dev.key), keepalive=10)
    agent = Agent(AgentConfig(device_id="tls-1", state_dir=str(tmp_path / "state"), mqtt=mqtt))
    agent.start()
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        assert agent.link.wait_connected(30), broker.log()
        # A second device, with its own certificate, subscribes to everything: the ACL
        # delivers only its own subtree (a SUBACK says nothing: PITFALLS).
        other = ca.issue_device("tls-2", tmp_path / "dev2")
        spy, seen = watch_all(broker, ca, other, "spy")
        # The controller's identity sees the whole fleet: tls-1's retained status, then its event.
        ctl, fleet_seen = watch_all(broker, ca, ca.issue_controller(tmp_path / "ctl"), "ctl")
        agent.emit("test.ping")
        wait_until(lambda: device_topic("tls-1", Channel.EVENTS) in fleet_seen, fleet_seen)
        assert device_topic("tls-1", Channel.STATUS) in fleet_seen
        # A marker to the spy's own desired state, sent after all of tls-1's messages: once it
        # is there, anything of tls-1's the broker would have delivered would be there too.
        ctl.publish(device_topic("tls-2", Channel.DESIRED), b"marker", qos=1).wait_for_publish(5)
        wait_until(lambda: device_topic("tls-2", Channel.DESIRED) in seen, seen)
        assert not [t for t in seen if "/tls-1/" in t], seen
        for client in (spy, ctl):
            client.loop_stop()
    finally:
        agent.stop()
        runner.join(10)


def test_agent_without_client_certificate_is_refused(tls_broker: tuple[Mosquitto, CertificateAuthority],
                                                     tmp_path: Path) -> None:
    broker, ca = tls_broker
    mqtt = MqttSettings(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=str(ca.cert_path), keepalive=10,
                        reconnect_min_s=0.2, reconnect_max_s=0.5)
    agent = Agent(AgentConfig(device_id="tls-3", state_dir=str(tmp_path / "state"), mqtt=mqtt))
    agent.start()
    try:
        assert not agent.link.wait_connected(2)
    finally:
        agent.link.stop()
