"""mqtts:// with a client certificate per device; the broker maps the certificate to the
username and an ACL confines each device to its own subtree."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, device_topic
from controller.demo.brokers import Mosquitto
from controller.pki import CertificateAuthority, IssuedCert

TEMPLATES = Path(__file__).resolve().parents[2] / "systemd" / "mosquitto"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, CertificateAuthority]]:
    ca = CertificateAuthority.create(tmp_path / "ca")
    server = ca.issue_server(["127.0.0.1", "localhost"], tmp_path / "server")
    acl = tmp_path / "acl"
    acl.write_text((TEMPLATES / "fleetgen.acl").read_text())
    # The listener settings of the shipped template, with this test's files.
    paths = {"/etc/fleetgen/pki/ca.pem": str(ca.cert_path), "/etc/fleetgen/pki/server.pem": str(server.cert),
             "/etc/fleetgen/pki/server.key": str(server.key), "/etc/mosquitto/fleetgen.acl": str(acl)}
    keys = ("cafile", "certfile", "keyfile", "require_certificate", "use_identity_as_username", "acl_file")
    lines = [line for line in (TEMPLATES / "fleetgen.conf").read_text().splitlines() if line.startswith(keys)]
    listener = "\n".join(lines)
    for template_path, real in paths.items():
        listener = listener.replace(template_path, real)
    assert len(lines) == len(keys) and "/etc/" not in listener
    broker = Mosquitto(tmp_path / "broker", listener_conf=listener)
    broker.start()
    yield broker, ca
    broker.stop()


def watch_all(broker: Mosquitto, ca: CertificateAuthority, cert: IssuedCert,
              client_id: str) -> tuple[paho.Client, list[str]]:
    """A TLS client with `cert` that subscribes to every fleetgen topic; returns what it sees."""
    seen: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(ca.cert_path), certfile=str(cert.cert), keyfile=str(cert.key))
    client.on_message = lambda c, u, m: seen.append(m.topic)
    client.connect("127.0.0.1", broker.port)
    client.subscribe("fleetgen/#", qos=1)
    client.loop_start()
    return client, seen


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
        assert agent.link.wait_connected(10), broker.log()
        # A second device, with its own certificate, subscribes to everything: the ACL
        # delivers only its own subtree (a SUBACK says nothing: PITFALLS).
        other = ca.issue_device("tls-2", tmp_path / "dev2")
        spy, seen = watch_all(broker, ca, other, "spy")
        # And a client with tls-1's own certificate sees tls-1's retained status.
        own, mine = watch_all(broker, ca, dev, "own")
        # The controller's identity sees the whole fleet.
        ctl, fleet_seen = watch_all(broker, ca, ca.issue_device("fleetgen-controller", tmp_path / "ctl"), "ctl")
        agent.emit("test.ping")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and device_topic("tls-1", Channel.STATUS) not in mine:
            time.sleep(0.05)
        time.sleep(0.5)
        assert device_topic("tls-1", Channel.STATUS) in mine
        assert not [t for t in seen if "/tls-1/" in t], seen
        assert device_topic("tls-1", Channel.STATUS) in fleet_seen
        for client in (spy, own, ctl):
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
