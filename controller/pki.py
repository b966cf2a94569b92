"""The controller's device CA: issues the broker's server certificate, the controller's own
client identity, and one client certificate per device (CN = device id, which the broker maps
to the MQTT username), and signs the CRL the broker reads.

DESIGN §4 / PITFALLS: a dedicated CA for devices, so that no other CA can mint a device
identity; keys are EC P-256, written 0600. A device's key never leaves the device: it sends a
CSR (`sign_csr`); `issue_device` (key made here) is for tests and hand-made identities.

    PKI/ca.pem, ca.key               the device CA
    PKI/crl.pem                      revoked device certificates (re-signed on every revocation)
    PKI/server.pem, server.key       the broker's and the enrollment endpoint's TLS identity
    PKI/controller.pem, .key         the controller's client identity (CN fleetgen.controller)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import FleetgenError, ProtocolError
from agent.fsutil import atomic_write, ensure_private_dir
from agent.protocol import validate_device_id

# The controller's certificate CN (= its MQTT username). The dot keeps it outside the device
# id grammar, so no enrolled device can ever be given the controller's broker rights.
CONTROLLER_IDENTITY = "fleetgen.controller"


class PkiError(FleetgenError):
    """The CA is missing or unreadable, or a CSR is refused (the message says why)."""


class CsrRefused(PkiError):
    """A certificate signing request does not qualify for a device certificate."""


@dataclass(frozen=True)
class IssuedCert:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetgen"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    atomic_write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


class CertificateAuthority:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.cert_path = self.dir / "ca.pem"
        self.key_path = self.dir / "ca.key"

    @classmethod
    def create(cls, directory: Path, name: str = "fleetgen device CA", days: int = 3650) -> CertificateAuthority:
        ca = cls(ensure_private_dir(directory))
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_key(ca.key_path, key)
        _write_cert(ca.cert_path, cert)
        return ca

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        """The CA in `directory`; PkiError naming the fix when there is none."""
        ca = cls(directory)
        if not (ca.cert_path.is_file() and ca.key_path.is_file()):
            raise PkiError(f"no device CA in {ca.dir} (create it with `fleetgen ca init`)")
        return ca

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise PkiError(f"device CA in {self.dir} is unreadable ({e})") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.key_path}: not an EC private key")
        return cert, key

    def certificate(self) -> x509.Certificate:
        return self._load()[0]

    def pem(self) -> bytes:
        return self.certificate().public_bytes(serialization.Encoding.PEM)

    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), hex: what an enrollment token pins."""
        return ca_fingerprint(self.certificate())

    def _issue(self, common_name: str, out_dir: Path, stem: str, *, server_names: list[str] | None,
               days: int) -> IssuedCert:
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names is not None:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out = ensure_private_dir(out_dir)
        issued = IssuedCert(out / f"{stem}.pem", out / f"{stem}.key")
        _write_key(issued.key, key)
        _write_cert(issued.cert, cert)
        return issued

    def issue_server(self, names: list[str], out_dir: Path, days: int = 825) -> IssuedCert:
        return self._issue(names[0], out_dir, "server", server_names=names, days=days)

    def issue_device(self, device_id: str, out_dir: Path, days: int = 825) -> IssuedCert:
        return self._issue(validate_device_id(device_id), out_dir, device_id, server_names=None, days=days)

    def issue_controller(self, out_dir: Path, days: int = 825) -> IssuedCert:
        """The controller's own client identity (the ACL's `user fleetgen.controller`)."""
        return self._issue(CONTROLLER_IDENTITY, out_dir, "controller", server_names=None, days=days)

    def sign_csr(self, csr_pem: bytes, device_id: str, *, days: int = 365,
                 now: dt.datetime | None = None) -> x509.Certificate:
        """A client certificate for the key in `csr_pem`, CN = `device_id` (the token's id).

        The subject and extensions are ours, never copied from the CSR: a CSR only proves
        possession of its key and names the id it asks for, which must be `device_id`.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CsrRefused(f"not a PEM certificate signing request ({e})") from None
        if not csr.is_signature_valid:
            raise CsrRefused("the CSR's signature does not verify (not signed by its own key)")
        names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [device_id]:
            asked = names[0] if len(names) == 1 else names
            raise CsrRefused(f"the CSR is for {asked!r} but the token is for {device_id!r}")
        public = csr.public_key()
        if not (isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"):
            raise CsrRefused(f"the CSR's key must be EC P-256 (got {type(public).__name__})")
        try:
            validate_device_id(device_id)
        except ProtocolError as e:
            raise CsrRefused(str(e)) from None
        ca_cert, ca_key = self._load()
        now = now or dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(device_id)).issuer_name(ca_cert.subject)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    def write_crl(self, revoked: Iterable[tuple[int, dt.datetime]], now: dt.datetime | None = None) -> Path:
        """Sign the CRL of every revoked serial and write it (atomically) to PKI/crl.pem.

        OpenSSL refuses every client once a CRL's nextUpdate has passed, and the broker reads
        this file locally, so nextUpdate is the CA's own expiry rather than a short freshness
        window; the CRL is re-signed on every revocation anyway.
        """
        ca_cert, ca_key = self._load()
        now = now or dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject).last_update(now - dt.timedelta(minutes=5))
            .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return self.crl_path


def ca_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
