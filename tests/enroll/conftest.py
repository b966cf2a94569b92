"""Fixtures for enrollment: a device CA made by `fleetgen ca init`, an image repository, the
controller's enrollment core and HTTPS endpoint, and a real Mosquitto running exactly the
configuration `fleetgen broker config` writes (on a free port, with this test's paths)."""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from controller.cli import main as fleetgen
from controller.demo.brokers import _ChildBroker, free_port, mosquitto_binary
from controller.enroll import Enrollment, EnrollmentService, newest_root
from controller.pki import CertificateAuthority
from controller.store import Store
from controller.tuf.repository import Repository


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    assert fleetgen(["ca", "init", "--pki", str(directory), "--name", "127.0.0.1", "--name", "localhost"]) == 0
    return directory


@pytest.fixture
def ca(pki: Path) -> CertificateAuthority:
    return CertificateAuthority.open(pki)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return Repository.create(tmp_path / "repo").path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    yield s
    s.close()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def enrollment(store: Store, ca: CertificateAuthority) -> Enrollment:
    return Enrollment(store, ca)


@pytest.fixture
def service(enrollment: Enrollment, repo: Path, pki: Path) -> Iterator[EnrollmentService]:
    svc = EnrollmentService(enrollment, ("127.0.0.1", 0), broker_url="mqtts://127.0.0.1:8883",
                            root=lambda: newest_root(repo), server_cert=pki / "server.pem",
                            server_key=pki / "server.key")
    svc.start()
    yield svc
    svc.stop()


def make_csr(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Identity:
    """A client identity on disk: certificate and key files."""

    cert: Path
    key: Path


def enroll_identity(enrollment: Enrollment, device_id: str, out: Path) -> Identity:
    """A device identity made the way devices make it: own key, CSR, one-time token."""
    key, csr = make_csr(device_id)
    token = enrollment.add_device(device_id).token
    _, cert = enrollment.enroll(str(token), csr)
    out.mkdir(parents=True, exist_ok=True)
    ident = Identity(out / f"{device_id}.pem", out / f"{device_id}.key")
    ident.cert.write_bytes(cert)
    ident.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return ident


@dataclass
class GeneratedBroker(_ChildBroker):
    """Mosquitto running the files `fleetgen broker config` wrote, unchanged, plus only what
    a test needs on top (its own persistence folder and log to stdout)."""

    config_dir: Path = field(default_factory=Path)

    def command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("mosquitto is not installed")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text((self.config_dir / "fleetgen.conf").read_text() + "\n".join([
            "user root" if os.geteuid() == 0 else "",
            f"persistence_location {self.workdir}/",
            # A log file, not stdout: Mosquitto flushes it per line, so a test can wait on it.
            f"log_dest file {self.file_log}", "log_type all", ""]))
        return [binary, "-c", str(conf)]

    @property
    def file_log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log(self) -> str:
        return super().log() + (self.file_log.read_text(errors="replace") if self.file_log.exists() else "")

    def reloads(self) -> int:
        return len(re.findall(r"Reloading config", self.log()))

    def reload(self) -> None:
        """SIGHUP (what `systemctl reload mosquitto` sends), returning once it has reloaded."""
        import signal
        import time

        assert self.proc is not None
        before = self.reloads()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.reloads() == before:
            assert time.monotonic() < deadline, self.log()[-2000:]
            time.sleep(0.02)


@pytest.fixture
def fleet_broker(tmp_path: Path, pki: Path) -> Iterator[GeneratedBroker]:
    out = tmp_path / "broker-config"
    port = free_port()
    assert fleetgen(["broker", "config", "--out", str(out), "--pki", str(pki), "--port", str(port),
                     "--bind", "127.0.0.1", "--certs", str(out / "certs")]) == 0
    # The generated ACL sits beside the certificates, where the config says.
    (out / "certs" / "fleetgen.acl").write_text((out / "fleetgen.acl").read_text())
    broker = GeneratedBroker(tmp_path / "broker", port=port, config_dir=out)
    broker.start()
    yield broker
    broker.stop()


class Client:
    """A paho client over TLS that records what is delivered to it and whether it connected."""

    def __init__(self, broker: GeneratedBroker, ca_file: Path | None, ident: Identity | None, client_id: str):
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        if ca_file is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if ident is not None:
            ctx.load_cert_chain(str(ident.cert), str(ident.key))
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.closed.set()
        self.client.on_connect_fail = lambda *a: self.closed.set()
        self.client.on_message = self._on_message
        self.broker = broker

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self.closed.set()
        else:
            self.connected.set()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def connect(self, timeout: float = 10.0) -> bool:
        """True once a successful CONNACK came; False when the broker closed or refused first."""
        try:
            self.client.connect("127.0.0.1", self.broker.port, keepalive=10)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        import time

        deadline = time.monotonic() + timeout
        while not (self.connected.is_set() or self.closed.is_set()):
            assert time.monotonic() < deadline, "neither CONNACK nor close within the timeout"
            time.sleep(0.01)
        return self.connected.is_set()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: (topic, payload) in self.messages, timeout), self.messages

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def subscribe(self, *filters: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(f, 1) for f in filters])
        assert done.wait(10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
