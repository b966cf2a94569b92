"""Enrollment, controller side: one-time tokens, certificates for CSRs, revocation, and the
HTTPS endpoint devices enroll through (docs/adr/0075, 0076).

`Enrollment` is the core over the store and the CA: `add_device` makes a token (only its
hash is stored), `enroll` trades a token and a CSR for a certificate, `revoke` revokes a
device's certificates, cancels its open tokens and re-signs the CRL. `EnrollmentService` is
the thin HTTPS adapter with `start()`/`stop()`, as `fleetgen serve` runs its services.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from agent.enroll import (
    CA_PATH,
    CRL_PATH,
    ENROLL_PATH,
    MAX_REQUEST_BYTES,
    EnrollRefusal,
    EnrollRequest,
    EnrollResponse,
    EnrollToken,
    TokenError,
)
from agent.errors import FleetgenError, UsageError
from agent.mqtt.url import BrokerUrl
from agent.protocol import validate_device_id
from controller.config import ControllerConfig
from controller.pki import CertificateAuthority, CsrRefused, PkiError, cert_pem
from controller.store import DeviceCertRow, DeviceRow, EnrollTokenRow, Store
from controller.store.views import Revoked

log = logging.getLogger(__name__)

MAX_TTL_S = 30 * 86400
# An oversized body up to this size is read and dropped before the refusal; beyond, the
# connection is just closed.
_DRAIN_BYTES = 1024 * 1024


class EnrollError(FleetgenError):
    """Enrollment is refused or cannot be served (the message says why)."""


class TokenRefused(EnrollError):
    """The token is unknown, already used, expired, or for another device."""


class Membership(Protocol):
    """Where enrolled devices join groups and revoked ones leave groups and rollouts."""

    def joined(self, device_id: str, group: str | None) -> None: ...

    def removed(self, device_id: str) -> Revoked: ...


class FleetMembership:
    """The store's groups and rollouts (controller/store): an enrolled device joins the group
    its token names (as an explicit member); a revoked one is marked revoked, which takes it
    out of every group (rule-based ones too), every unfinished rollout and the director."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def joined(self, device_id: str, group: str | None) -> None:
        if not group:
            return
        from controller.fleet.errors import FleetError
        from controller.store.views import GroupRule

        groups = self.store.repos.groups
        try:
            groups.create(group, now=self.clock())
            log.info("group %s created for %s (named by its enrollment token)", group, device_id)
        except FleetError:
            pass  # it exists
        groups.add(group, [GroupRule("device", device_id)])
        log.info("device %s joined group %s", device_id, group)

    def removed(self, device_id: str) -> Revoked:
        out = self.store.repos.devices.revoke(device_id, self.clock())
        log.info("device %s revoked: out of groups %s and rollouts %s", device_id,
                 ", ".join(out.groups) or "(none by id)", ", ".join(map(str, out.rollouts)) or "(none)")
        return out


@dataclass(frozen=True, slots=True)
class NewToken:
    token: EnrollToken
    expires: float
    group: str | None


@dataclass(frozen=True, slots=True)
class Revocation:
    device_id: str
    serials: tuple[str, ...]  # revoked now
    already: int  # certificates that were revoked before
    tokens_cancelled: int
    crl: Path
    fleet: Revoked  # the groups and rollouts it left


def iso_utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Enrollment:
    def __init__(self, store: Store, ca: CertificateAuthority, *, cert_days: int = 365,
                 membership: Membership | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ca = ca
        self.cert_days = cert_days
        self.membership = membership or FleetMembership(store, clock)
        self.clock = clock

    def add_device(self, device_id: str, *, ttl_s: float = 86400, group: str | None = None) -> NewToken:
        """A new one-time token for `device_id`; only its hash is stored."""
        try:
            validate_device_id(device_id)
        except FleetgenError as e:
            raise UsageError(str(e)) from None
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise UsageError(f"--ttl {ttl_s:g}s: must be between 1m and {MAX_TTL_S // 86400}d")
        token = EnrollToken(device_id, secrets.token_urlsafe(32), self.ca.fingerprint())
        now = self.clock()
        with Session(self.store.engine) as s, s.begin():
            s.add(EnrollTokenRow(token_hash=token.secret_hash, device_id=device_id, group_name=group,
                                 created=now, expires=now + ttl_s, used=None))
        log.info("enrollment token for %s created, expires %s", device_id, iso_utc(now + ttl_s))
        return NewToken(token, now + ttl_s, group)

    def enroll(self, token_text: str, csr_pem: bytes) -> tuple[str, bytes]:
        """Trade a token and a CSR for a certificate: (device id, certificate PEM).

        The token is claimed with a conditional UPDATE in the same transaction that records
        the certificate, so two racing requests (or two replicas) cannot both use it, and a
        refused CSR leaves the token unused.
        """
        try:
            token = EnrollToken.parse(token_text)
        except TokenError as e:
            raise TokenRefused(str(e)) from None
        now = self.clock()
        with Session(self.store.engine) as s, s.begin():
            row = s.get(EnrollTokenRow, token.secret_hash)
            if row is None or row.device_id != token.device_id:
                raise TokenRefused(f"unknown enrollment token for {token.device_id!r} "
                                   "(never issued, or cancelled by a revocation)")
            if row.used is not None:
                raise TokenRefused(f"the token for {row.device_id!r} was already used at {iso_utc(row.used)}")
            if now >= row.expires:
                raise TokenRefused(f"the token for {row.device_id!r} expired at {iso_utc(row.expires)}")
            try:
                cert = self.ca.sign_csr(csr_pem, row.device_id, days=self.cert_days,
                                        now=dt.datetime.fromtimestamp(now, dt.UTC))
            except CsrRefused as e:
                raise EnrollError(str(e)) from None
            claimed = s.execute(update(EnrollTokenRow)
                                .where(EnrollTokenRow.token_hash == token.secret_hash, EnrollTokenRow.used.is_(None))
                                .values(used=now))
            if getattr(claimed, "rowcount", 1) != 1:
                raise TokenRefused(f"the token for {row.device_id!r} was already used")
            s.add(DeviceCertRow(serial=f"{cert.serial_number:x}", device_id=row.device_id, issued=now,
                                not_after=cert.not_valid_after_utc.timestamp(), revoked=None))
            device = s.get(DeviceRow, row.device_id)
            if device is None:
                # Listed (offline, never seen) from enrollment on, before its first message.
                s.add(DeviceRow(id=row.device_id, board="", agent_version="", online=False, status_ts=0.0,
                                first_seen=now, last_seen=0.0, health="unknown", desired_version=0))
            elif device.revoked is not None:
                # Revoked before, enrolled again with a new token: back in the fleet.
                device.revoked = None
                log.info("%s was revoked and enrolled again: back in the fleet", row.device_id)
            group = row.group_name
        self.membership.joined(token.device_id, group)
        log.info("enrolled %s: certificate serial %x, valid until %s", token.device_id, cert.serial_number,
                 cert.not_valid_after_utc.isoformat())
        return token.device_id, cert_pem(cert)

    def revoke(self, device_id: str) -> Revocation:
        """Revoke every certificate of `device_id`, cancel its open tokens, re-sign the CRL."""
        validate_device_id(device_id)
        now = self.clock()
        with Session(self.store.engine) as s, s.begin():
            certs = s.scalars(select(DeviceCertRow).where(DeviceCertRow.device_id == device_id)).all()
            cancelled = s.execute(delete(EnrollTokenRow).where(EnrollTokenRow.device_id == device_id,
                                                               EnrollTokenRow.used.is_(None)))
            n_cancelled = int(getattr(cancelled, "rowcount", 0) or 0)
            if not certs and not n_cancelled:
                raise EnrollError(f"device {device_id!r} has no certificate and no open token here")
            fresh = [c for c in certs if c.revoked is None]
            for c in fresh:
                c.revoked = now
            serials = tuple(c.serial for c in fresh)
        crl = self.write_crl()
        fleet = self.membership.removed(device_id)
        return Revocation(device_id, serials, len(certs) - len(serials), n_cancelled, crl, fleet)

    def write_crl(self) -> Path:
        with Session(self.store.engine) as s:
            rows = s.execute(select(DeviceCertRow.serial, DeviceCertRow.revoked)
                             .where(DeviceCertRow.revoked.is_not(None))).all()
        return self.ca.write_crl([(int(serial, 16), dt.datetime.fromtimestamp(when or 0.0, dt.UTC))
                                  for serial, when in rows])


def newest_root(repository: Path) -> bytes:
    """The newest root metadata of the image repository, byte for byte."""
    metadata = Path(repository) / "metadata"
    versions = sorted((int(p.name.split(".", 1)[0]), p) for p in metadata.glob("*.root.json")
                      if p.name.split(".", 1)[0].isdigit())
    if not versions:
        raise EnrollError(f"{metadata}: no root metadata (create the repository with `fleetgen keys init`)")
    return versions[-1][1].read_bytes()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"enroll.listen: {text!r}: expected HOST:PORT (e.g. 0.0.0.0:8443)")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Set by EnrollmentService before serving.
    tls: ssl.SSLContext
    service: EnrollmentService

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the request's own thread with a timeout, so a
        # client that stalls it cannot block accept() for everyone else.
        request.settimeout(10.0)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.info("enrollment: TLS handshake with %s failed: %s", client_address[0], e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("enrollment %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, error: str) -> None:
        log.warning("enrollment from %s refused: %s", self.client_address[0], error)
        self._send(status, msgspec.json.encode(EnrollRefusal(error=error)))

    def do_GET(self) -> None:
        service = self.server.service
        if self.path == CA_PATH:
            self._send(200, service.ca_pem, "application/x-pem-file")
        elif self.path == CRL_PATH and service.enrollment.ca.crl_path.is_file():
            self._send(200, service.enrollment.ca.crl_path.read_bytes(), "application/x-pem-file")
        else:
            self._refuse(404, f"no such resource {self.path[:100]!r}")

    def do_POST(self) -> None:
        if self.path != ENROLL_PATH:
            self._refuse(404, f"no such resource {self.path[:100]!r}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._refuse(411, "Content-Length required")
            return
        if not 0 < length <= MAX_REQUEST_BYTES:
            if 0 < length <= _DRAIN_BYTES:
                # Read what was sent so the client gets the answer instead of a reset.
                self.rfile.read(length)
            self._refuse(413, f"request body of {length} bytes (limit {MAX_REQUEST_BYTES})")
            return
        try:
            request = msgspec.json.decode(self.rfile.read(length), type=EnrollRequest)
        except (msgspec.DecodeError, OSError) as e:
            self._refuse(400, f"malformed enrollment request ({e})")
            return
        self.server.service.answer(self, request)


class EnrollmentService:
    """The HTTPS enrollment endpoint: GET /v1/ca.pem, GET /v1/crl.pem, POST /v1/enroll."""

    def __init__(self, enrollment: Enrollment, listen: tuple[str, int], *, broker_url: str,
                 root: Callable[[], bytes], server_cert: Path, server_key: Path) -> None:
        self.enrollment = enrollment
        self.broker_url = broker_url
        self.root = root
        self.ca_pem = enrollment.ca.pem()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls.load_cert_chain(str(server_cert), str(server_key))
        except (OSError, ssl.SSLError) as e:
            raise PkiError(f"enrollment endpoint: cannot load {server_cert} ({e}); run `fleetgen ca init`") from e
        try:
            self._server = _Server(listen, _Handler, bind_and_activate=True)
        except OSError as e:
            raise EnrollError(f"enroll.listen {listen[0]}:{listen[1]}: cannot listen ({e.strerror})") from e
        self._server.tls = tls
        self._server.service = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def answer(self, handler: _Handler, request: EnrollRequest) -> None:
        try:
            device_id, cert = self.enrollment.enroll(request.token, request.csr.encode())
            root = self.root()
        except (EnrollError, PkiError) as e:
            handler._refuse(403 if isinstance(e, TokenRefused) else 400, str(e))
            return
        body = EnrollResponse(device_id=device_id, certificate=cert.decode(), ca=self.ca_pem.decode(),
                              broker_url=self.broker_url, root=base64.b64encode(root).decode())
        handler._send(200, msgspec.json.encode(body))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="enrollment", daemon=True)
        self._thread.start()
        log.info("enrollment endpoint on https://%s:%d", socket.gethostname(), self.port)

    def stop(self) -> None:
        # shutdown() waits for serve_forever to end: only ask when it is running.
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()


def enrollment_service(config: ControllerConfig, store: Store) -> EnrollmentService:
    """The enrollment endpoint `fleetgen serve` runs when `enroll.listen` is set."""
    if config.enroll.listen is None:
        raise UsageError("enroll.listen: not set")
    if config.enroll.broker_url is None:
        raise UsageError("enroll.broker_url: required with enroll.listen (the mqtts:// URL devices are given)")
    if config.repository is None:
        raise UsageError("enroll.listen needs repository (devices are given its root metadata)")
    BrokerUrl.parse(config.enroll.broker_url, key="enroll.broker_url")
    repository = Path(config.repository)
    newest_root(repository)  # fail at start, not at the first device
    pki = config.pki_path
    enrollment = Enrollment(store, CertificateAuthority.open(pki), cert_days=config.enroll.cert_days)
    return EnrollmentService(enrollment, parse_listen(config.enroll.listen), broker_url=config.enroll.broker_url,
                             root=lambda: newest_root(repository), server_cert=pki / "server.pem",
                             server_key=pki / "server.key")
