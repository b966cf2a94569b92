"""One-time tokens and certificates from CSRs: the controller's enrollment core (real CA,
real SQLite), and the `fleetgen ca|device` commands around it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.enroll import EnrollToken
from controller.cli import main as fleetgen
from controller.enroll import EnrollError, Enrollment, TokenRefused
from controller.pki import CONTROLLER_IDENTITY, CertificateAuthority
from controller.store import Store
from tests.enroll.conftest import Clock, make_csr


def test_a_token_works_once(enrollment: Enrollment, ca: CertificateAuthority) -> None:
    token = enrollment.add_device("kiosk-1").token
    key, csr = make_csr("kiosk-1")
    device_id, pem = enrollment.enroll(str(token), csr)
    cert = x509.load_pem_x509_certificate(pem)
    assert device_id == "kiosk-1"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kiosk-1"
    cert.verify_directly_issued_by(ca.certificate())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    with pytest.raises(TokenRefused, match="already used"):
        enrollment.enroll(str(token), make_csr("kiosk-1")[1])


def test_expired_token_is_refused(store: Store, ca: CertificateAuthority, clock: Clock) -> None:
    enrollment = Enrollment(store, ca, clock=clock)
    token = enrollment.add_device("kiosk-2", ttl_s=3600).token
    clock.now += 3600
    with pytest.raises(TokenRefused, match="expired at"):
        enrollment.enroll(str(token), make_csr("kiosk-2")[1])


def test_csr_for_another_id_is_refused_and_leaves_the_token_usable(enrollment: Enrollment) -> None:
    token = enrollment.add_device("kiosk-3").token
    with pytest.raises(EnrollError, match="the CSR is for 'kiosk-4' but the token is for 'kiosk-3'"):
        enrollment.enroll(str(token), make_csr("kiosk-4")[1])
    # Nor can the token be bent to another id by editing its visible device-id part.
    forged = EnrollToken("kiosk-4", token.secret, token.ca_sha256)
    with pytest.raises(TokenRefused, match="unknown enrollment token for 'kiosk-4'"):
        enrollment.enroll(str(forged), make_csr("kiosk-4")[1])
    assert enrollment.enroll(str(token), make_csr("kiosk-3")[1])[0] == "kiosk-3"


def test_controller_identity_cannot_be_enrolled(enrollment: Enrollment) -> None:
    with pytest.raises(Exception, match="invalid device id"):
        enrollment.add_device(CONTROLLER_IDENTITY)


@pytest.mark.parametrize("bad", ["garbage", "",
                                 "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"])
def test_malformed_csr_is_refused(enrollment: Enrollment, bad: str) -> None:
    token = enrollment.add_device("kiosk-5").token
    with pytest.raises(EnrollError, match="certificate signing request"):
        enrollment.enroll(str(token), bad.encode())


def test_csr_with_another_key_type_is_refused(enrollment: Enrollment) -> None:
    token = enrollment.add_device("kiosk-6").token
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiosk-6")])).sign(key, hashes.SHA256()))
    with pytest.raises(EnrollError, match="EC P-256"):
        enrollment.enroll(str(token), csr.public_bytes(serialization.Encoding.PEM))


def test_unknown_and_damaged_tokens_are_refused(enrollment: Enrollment, ca: CertificateAuthority) -> None:
    never = EnrollToken("kiosk-7", "A" * 43, ca.fingerprint())
    with pytest.raises(TokenRefused, match="unknown enrollment token"):
        enrollment.enroll(str(never), make_csr("kiosk-7")[1])
    with pytest.raises(TokenRefused, match="not a fleetgen enrollment token"):
        enrollment.enroll("fgt1.kiosk-7", make_csr("kiosk-7")[1])


def test_only_the_hash_of_a_token_is_stored(enrollment: Enrollment, tmp_path: Path) -> None:
    token = enrollment.add_device("kiosk-8").token
    enrollment.store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("controller.db*"))
    assert token.secret.encode() not in data
    assert token.secret_hash.encode() in data


def test_racing_enrollments_with_one_token_issue_one_certificate(enrollment: Enrollment) -> None:
    token = str(enrollment.add_device("kiosk-9").token)
    csrs = [make_csr("kiosk-9")[1] for _ in range(4)]
    results: list[str] = []
    start = threading.Barrier(len(csrs))

    def attempt(csr: bytes) -> None:
        start.wait()
        try:
            enrollment.enroll(token, csr)
            results.append("ok")
        except TokenRefused:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(c,)) for c in csrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok", "refused", "refused", "refused"]


def test_revoke_puts_the_serial_on_the_crl_and_cancels_open_tokens(enrollment: Enrollment,
                                                                    ca: CertificateAuthority) -> None:
    _, pem = enrollment.enroll(str(enrollment.add_device("kiosk-10").token), make_csr("kiosk-10")[1])
    serial = x509.load_pem_x509_certificate(pem).serial_number
    pending = enrollment.add_device("kiosk-10").token
    done = enrollment.revoke("kiosk-10")
    assert done.serials == (f"{serial:x}",) and done.tokens_cancelled == 1
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate().public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(TokenRefused, match="unknown enrollment token"):
        enrollment.enroll(str(pending), make_csr("kiosk-10")[1])
    again = enrollment.revoke("kiosk-10")
    assert again.serials == () and again.already == 1
    with pytest.raises(EnrollError, match="no certificate and no open token"):
        enrollment.revoke("never-added")


def test_cli_add_prints_a_token_and_revoke_reports(tmp_path: Path, pki: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    common = ["--db", db, "--pki", str(pki), "--state-dir", str(tmp_path / "state")]
    assert fleetgen(["device", "add", "cli-1", "--ttl", "2h", *common]) == 0
    out = capsys.readouterr()
    token = EnrollToken.parse(out.out.strip())
    assert token.device_id == "cli-1" and token.ca_sha256 == CertificateAuthority.open(pki).fingerprint()
    assert "fleetgen-agent install --controller" in out.err
    assert fleetgen(["device", "revoke", "cli-1", *common]) == 0
    assert "cancelled 1 open token" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["device", "add", "Bad_ID"], "invalid device id 'Bad_ID'"),
    (["device", "add", "cli-2", "--ttl", "10s"], "--ttl 10s: must be between 1m and 30d"),
    (["device", "add", "cli-2", "--ttl", "soon"], "expected a duration"),
    (["device", "revoke", "cli-3"], "has no certificate and no open token"),
])
def test_cli_refusals_are_one_line(argv: list[str], message: str, tmp_path: Path, pki: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--db", f"sqlite:///{tmp_path / 'cli.db'}", "--pki", str(pki), "--state-dir", str(tmp_path / "s")]
    try:
        code = fleetgen([*argv, *common])
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_ca_init_refuses_to_replace_a_ca(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (pki / "ca.pem").read_bytes()
    assert fleetgen(["ca", "init", "--pki", str(pki)]) == 2
    assert "already has a device CA" in capsys.readouterr().err
    assert (pki / "ca.pem").read_bytes() == before
    for name in ("ca.key", "server.key", "controller.key"):
        assert (pki / name).stat().st_mode & 0o077 == 0, name


def test_device_add_without_a_ca_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = fleetgen(["device", "add", "x-1", "--db", f"sqlite:///{tmp_path / 'd.db'}", "--pki", str(tmp_path / "none")])
    assert code == 1 and "fleetgen ca init" in capsys.readouterr().err
