"""The generated Mosquitto configuration, running for real, with real enrolled certificates.

ACLs are checked at delivery (PITFALLS: a forbidden SUBSCRIBE is still granted): each
test ends with a marker message that the same path must deliver, so "nothing forbidden
arrived" is asserted only after the broker has demonstrably delivered what came later.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.protocol import Channel, device_topic
from controller.broker_config import BrokerLayout, render
from controller.enroll import Enrollment
from controller.pki import CertificateAuthority
from tests.enroll.conftest import Client, GeneratedBroker, Identity, enroll_identity

SHIPPED = Path(__file__).resolve().parents[2] / "systemd" / "mosquitto"


@pytest.fixture
def fleet(fleet_broker: GeneratedBroker, enrollment: Enrollment, ca: CertificateAuthority, pki: Path,
          tmp_path: Path) -> dict[str, Client]:
    a = enroll_identity(enrollment, "dev-a", tmp_path / "a")
    b = enroll_identity(enrollment, "dev-b", tmp_path / "b")
    ctl = Identity(pki / "controller.pem", pki / "controller.key")
    clients = {name: Client(fleet_broker, ca.cert_path, ident, f"client-{name}")
               for name, ident in (("a", a), ("b", b), ("ctl", ctl))}
    for name, client in clients.items():
        assert client.connect(), (name, fleet_broker.log()[-2000:])
    yield clients
    for client in clients.values():
        client.stop()


def test_shipped_templates_are_the_generated_defaults() -> None:
    files = render(BrokerLayout())
    for name in ("fleetgen.conf", "fleetgen.acl", "fleetgen-crl.path", "fleetgen-crl.service"):
        assert (SHIPPED / name).read_text() == files[name], f"systemd/mosquitto/{name} is stale"


def test_a_device_receives_nothing_of_another_devices_topics(fleet: dict[str, Client]) -> None:
    a, b, ctl = fleet["a"], fleet["b"], fleet["ctl"]
    a.subscribe("fleetgen/#", "fleetgen/v1/dev/dev-b/#", "#")
    ctl.subscribe("fleetgen/v1/dev/+/status")
    # What device B sends, and what the controller sends B (its requests, desired state).
    for channel in (Channel.STATUS, Channel.REPORTED, Channel.TELEMETRY, Channel.EVENTS, Channel.REQ):
        b.publish(device_topic("dev-b", channel), b"from-b")
    for channel in (Channel.DESIRED, Channel.RESP):
        ctl.publish(device_topic("dev-b", channel), b"to-b", retain=channel is Channel.DESIRED)
    ctl.wait_for(device_topic("dev-b", Channel.STATUS), b"from-b")  # the controller does see B
    # The marker: A may read its own desired state; it comes after all of the above.
    ctl.publish(device_topic("dev-a", Channel.DESIRED), b"marker")
    a.wait_for(device_topic("dev-a", Channel.DESIRED), b"marker")
    assert [t for t, _ in a.messages if "/dev-b/" in t] == []


def test_a_device_cannot_publish_into_another_devices_topics(fleet: dict[str, Client]) -> None:
    a, b, ctl = fleet["a"], fleet["b"], fleet["ctl"]
    ctl.subscribe("fleetgen/v1/dev/+/#")
    b.subscribe("fleetgen/v1/dev/dev-b/#")
    for channel in Channel:
        a.publish(device_topic("dev-b", channel), b"forged")
    # Nor into its own channels the other way round (desired state and responses come from
    # the controller only).
    a.publish(device_topic("dev-a", Channel.DESIRED), b"forged")
    a.publish(device_topic("dev-a", Channel.RESP), b"forged")
    a.publish(device_topic("dev-a", Channel.STATUS), b"marker")
    ctl.wait_for(device_topic("dev-a", Channel.STATUS), b"marker")
    ctl.publish(device_topic("dev-b", Channel.RESP), b"marker")
    b.wait_for(device_topic("dev-b", Channel.RESP), b"marker")
    assert [m for m in ctl.messages if m[1] == b"forged"] == []
    assert [m for m in b.messages if m[1] == b"forged"] == []


def test_a_revoked_device_is_refused_at_connect(fleet_broker: GeneratedBroker, enrollment: Enrollment,
                                                ca: CertificateAuthority, tmp_path: Path) -> None:
    c = enroll_identity(enrollment, "dev-c", tmp_path / "c")
    before = Client(fleet_broker, ca.cert_path, c, "before")
    assert before.connect()
    before.stop()
    enrollment.revoke("dev-c")
    # The broker's copy of the CRL, as fleetgen-crl.service installs it, then a reload.
    (fleet_broker.config_dir / "certs" / "crl.pem").write_bytes(ca.crl_path.read_bytes())
    fleet_broker.reload()
    assert not Client(fleet_broker, ca.cert_path, c, "after").connect()
    # Another device is unaffected by the reload.
    d = enroll_identity(enrollment, "dev-d", tmp_path / "d")
    other = Client(fleet_broker, ca.cert_path, d, "other")
    assert other.connect()
    other.stop()


def test_anonymous_and_foreign_clients_are_refused(fleet_broker: GeneratedBroker, ca: CertificateAuthority,
                                                   tmp_path: Path) -> None:
    assert not Client(fleet_broker, ca.cert_path, None, "anonymous").connect()
    # A certificate for a valid device id from another CA (PITFALLS: any CA in cafile counts).
    foreign = CertificateAuthority.create(tmp_path / "foreign")
    issued = foreign.issue_device("dev-a", tmp_path / "foreign-dev")
    assert not Client(fleet_broker, ca.cert_path, Identity(issued.cert, issued.key), "foreign").connect()
    # A self-signed "CA" of the same name does not help either.
    assert not Client(fleet_broker, None, Identity(issued.cert, issued.key), "foreign-noverify").connect()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_crl_units_verify_without_output(tmp_path: Path) -> None:
    for name, text in render(BrokerLayout()).items():
        if name.startswith("fleetgen-crl."):
            (tmp_path / name).write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "fleetgen-crl.path"),
                             str(tmp_path / "fleetgen-crl.service")], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
