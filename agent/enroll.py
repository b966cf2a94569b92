"""Enrollment, device side: exchange a one-time token for this device's broker identity.

The device makes its own key (it never leaves the device), sends a CSR with the token to the
controller's enrollment endpoint (HTTPS, docs/adr/0075), and gets back its certificate
(CN = device id), the device CA, the broker URL and the image repository's root metadata
(which carries the director key, ADR 0032).

Before it has any certificate the device cannot verify the endpoint by a CA it knows, so
the token itself pins the CA: `fgt1.DEVICE_ID.SECRET.CA_SHA256`. The device fetches the CA
certificate, checks its SHA-256 against the token, and only then sends the token, over TLS
verified against that CA (kubeadm's discovery-token-ca-cert-hash, in one string).

Nothing is written on a failure: the key stays in memory until the controller has answered
with a certificate for it, so a retry (with a new token) starts clean.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from agent.errors import FleetgenError, UsageError
from agent.fsutil import atomic_write, ensure_private_dir
from agent.protocol import validate_device_id

if TYPE_CHECKING:  # cryptography is imported only when enrolling (agent footprint)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

log = logging.getLogger(__name__)

SCHEMA = 1
TOKEN_PREFIX = "fgt1"
ENROLL_PATH = "/v1/enroll"
CA_PATH = "/v1/ca.pem"
CRL_PATH = "/v1/crl.pem"
# Bounds on what either side reads (a CSR is ~500 bytes; root metadata a few KiB).
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_PORT = 8443

_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EnrollError(FleetgenError):
    """Enrollment failed: controller unreachable, refused, or its answer does not check out."""


class TokenError(UsageError):
    """The token given on the command line is not a fleetgen enrollment token."""


@dataclass(frozen=True, slots=True)
class EnrollToken:
    device_id: str
    secret: str
    ca_sha256: str

    @classmethod
    def parse(cls, text: str) -> EnrollToken:
        parts = text.strip().split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            raise TokenError(f"not a fleetgen enrollment token (expected {TOKEN_PREFIX}.DEVICE.SECRET.CA_SHA256, "
                             f"as `fleetgen device add` prints)")
        _, device_id, secret, ca = parts
        try:
            validate_device_id(device_id)
        except FleetgenError as e:
            raise TokenError(f"enrollment token: {e}") from None
        if not _SECRET.fullmatch(secret) or not _SHA256.fullmatch(ca):
            raise TokenError("enrollment token is damaged (secret or CA fingerprint malformed)")
        return cls(device_id, secret, ca)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.device_id}.{self.secret}.{self.ca_sha256}"

    @property
    def secret_hash(self) -> str:
        """What the controller stores: the secret has 256 bits, so one SHA-256 suffices."""
        return hashlib.sha256(self.secret.encode()).hexdigest()


class EnrollRequest(msgspec.Struct, kw_only=True, frozen=True):
    token: str
    csr: str  # PEM
    schema: int = SCHEMA


class EnrollResponse(msgspec.Struct, kw_only=True, frozen=True):
    device_id: str
    certificate: str  # PEM, CN = device_id
    ca: str  # PEM: the device CA (the chain is one certificate deep)
    broker_url: str
    root: str  # base64 of the root metadata's exact bytes (they carry its signatures)
    schema: int = SCHEMA


class EnrollRefusal(msgspec.Struct, kw_only=True, frozen=True):
    error: str
    schema: int = SCHEMA


@dataclass(frozen=True, slots=True)
class Controller:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Controller:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UsageError(f"--controller {url!r}: not a valid URL ({e})") from None
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"--controller {url!r}: expected https://HOST[:PORT] (the enrollment endpoint)")
        return cls(parts.hostname, port or DEFAULT_PORT)

    def __str__(self) -> str:
        return f"https://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DevicePki:
    """Where a device keeps its broker identity: STATE/pki/{ca.pem, ID.pem, ID.key}."""

    dir: Path
    device_id: str

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / f"{self.device_id}.pem"

    @property
    def key(self) -> Path:
        return self.dir / f"{self.device_id}.key"


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What the controller answered, checked, not yet written anywhere."""

    device_id: str
    broker_url: str
    root: bytes
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def write(self, pki_dir: Path) -> DevicePki:
        """STATE/pki/: the key 0600, certificate and CA 0644, each written atomically."""
        pki = DevicePki(ensure_private_dir(pki_dir), self.device_id)
        atomic_write(pki.key, self.key_pem)
        atomic_write(pki.cert, self.cert_pem, mode=0o644)
        atomic_write(pki.ca, self.ca_pem, mode=0o644)
        return pki


def _request(controller: Controller, context: ssl.SSLContext, method: str, path: str,
             body: bytes | None = None, timeout: float = 15.0) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(controller.host, controller.port, context=context, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise EnrollError(f"{controller}{path}: answer larger than {MAX_RESPONSE_BYTES} bytes")
        return resp.status, data
    except ssl.SSLCertVerificationError as e:
        raise EnrollError(f"{controller}: its TLS certificate does not verify against the pinned CA "
                          f"({e.verify_message})") from e
    except (OSError, http.client.HTTPException) as e:
        raise EnrollError(f"cannot reach the controller at {controller} ({e})") from e
    finally:
        conn.close()


def fetch_pinned_ca(controller: Controller, ca_sha256: str, timeout: float = 15.0) -> bytes:
    """The controller's device CA (PEM), checked against the fingerprint the token pins.

    This one request cannot verify the server (nothing to verify it with yet); the
    fingerprint check afterwards is what authenticates the CA it returns.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    status, data = _request(controller, insecure, "GET", CA_PATH, timeout=timeout)
    if status != 200:
        raise EnrollError(f"{controller}{CA_PATH}: HTTP {status}; is this a fleetgen enrollment endpoint?")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise EnrollError(f"{controller}{CA_PATH}: not a PEM certificate") from None
    got = cert.fingerprint(hashes.SHA256()).hex()
    if not hmac.compare_digest(got, ca_sha256):
        raise EnrollError(f"{controller} presents device CA sha256 {got[:16]}..., but the token pins "
                          f"{ca_sha256[:16]}...: wrong controller, or someone in between")
    return data


def enroll(controller: Controller, token: EnrollToken, timeout: float = 15.0) -> Enrolled:
    """Enroll with `token`: the checked answer, with the new key; nothing is written here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_pem = fetch_pinned_ca(controller, token.ca_sha256, timeout)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, token.device_id)]))
           .sign(key, hashes.SHA256()))
    body = msgspec.json.encode(EnrollRequest(token=str(token),
                                             csr=csr.public_bytes(serialization.Encoding.PEM).decode()))
    verified = ssl.create_default_context(cadata=ca_pem.decode())
    status, data = _request(controller, verified, "POST", ENROLL_PATH, body, timeout)
    if status != 200:
        try:
            reason = msgspec.json.decode(data, type=EnrollRefusal).error
        except msgspec.DecodeError:
            reason = f"HTTP {status}"
        raise EnrollError(f"the controller refused enrollment of {token.device_id!r}: {reason}")
    try:
        answer = msgspec.json.decode(data, type=EnrollResponse)
        root = base64.b64decode(answer.root, validate=True)
        cert = x509.load_pem_x509_certificate(answer.certificate.encode())
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except (msgspec.DecodeError, ValueError) as e:
        raise EnrollError(f"{controller}: malformed enrollment answer ({e})") from None
    _check_issued(cert, ca_cert, key, token.device_id)
    if answer.ca.strip() != ca_pem.decode().strip():
        raise EnrollError(f"{controller}: the answer names another CA than the pinned one")
    log.info("enrolled as %s with %s; broker %s", token.device_id, controller, answer.broker_url)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Enrolled(token.device_id, answer.broker_url, root, key_pem,
                    cert.public_bytes(serialization.Encoding.PEM), ca_pem)


def _check_issued(cert: x509.Certificate, ca_cert: x509.Certificate, key: PrivateKeyTypes, device_id: str) -> None:
    """The certificate is for our key and id, and issued by the pinned CA."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise EnrollError("the issued certificate is not for this device's key")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [device_id]:
        raise EnrollError(f"the issued certificate is for {names!r}, not {device_id!r}")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise EnrollError(f"the issued certificate is not signed by the pinned CA ({e})") from None


def already_enrolled(pki: DevicePki, ca_sha256: str) -> bool:
    """True when STATE/pki holds a certificate for this id and key, from the CA the token pins."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
        key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if ca_cert.fingerprint(hashes.SHA256()).hex() != ca_sha256:
        return False
    try:
        _check_issued(cert, ca_cert, key, pki.device_id)
    except EnrollError:
        return False
    import datetime as dt

    return cert.not_valid_after_utc > dt.datetime.now(dt.UTC)


class EnrollmentRecord(msgspec.Struct, kw_only=True, frozen=True):
    """STATE/pki/enrollment.json: what a re-run of `install` needs without a new token."""

    device_id: str
    broker_url: str
    controller: str
    # The token this identity was enrolled with (its secret's SHA-256): the same token again
    # is a re-run; another one is a deliberate re-enrollment (after a revocation, say).
    token_sha256: str = ""
    schema: int = SCHEMA


def read_record(path: Path) -> EnrollmentRecord | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=EnrollmentRecord)
    except (OSError, msgspec.DecodeError):
        return None
