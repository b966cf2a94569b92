"""The HTTPS enrollment endpoint refuses malformed requests with a reason and keeps serving."""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agent.enroll import EnrollRefusal, EnrollResponse
from controller.cli import main as fleetgen
from controller.enroll import Enrollment, EnrollmentService
from controller.pki import CertificateAuthority
from tests.enroll.conftest import make_csr


def request(service: EnrollmentService, ca: CertificateAuthority, method: str, path: str,
            body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", service.port, timeout=10,
                                       context=ssl.create_default_context(cafile=str(ca.cert_path)))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"{not json", 400, "malformed enrollment request"),
    (b'{"token": 5, "csr": "x"}', 400, "malformed enrollment request"),
    (b"x" * (65 * 1024), 413, "limit 65536"),
    (b'{"token": "fgt1.a.b.c", "csr": "x"}', 403, "enrollment token is damaged"),
])
def test_bad_requests_are_refused_with_a_reason(service: EnrollmentService, ca: CertificateAuthority,
                                                enrollment: Enrollment, body: bytes, status: int,
                                                reason: str) -> None:
    got, data = request(service, ca, "POST", "/v1/enroll", body, {"Content-Type": "application/json"})
    assert got == status and reason in msgspec.json.decode(data, type=EnrollRefusal).error, data
    # And it still serves a good one afterwards.
    token = enrollment.add_device("after-1").token
    good = msgspec.json.encode({"token": str(token), "csr": make_csr("after-1")[1].decode()})
    got, data = request(service, ca, "POST", "/v1/enroll", good, {"Content-Type": "application/json"})
    assert got == 200 and msgspec.json.decode(data, type=EnrollResponse).device_id == "after-1"


def test_ca_and_crl_are_served_and_unknown_paths_are_404(service: EnrollmentService, ca: CertificateAuthority) -> None:
    assert request(service, ca, "GET", "/v1/ca.pem") == (200, ca.cert_path.read_bytes())
    assert request(service, ca, "GET", "/v1/crl.pem") == (200, ca.crl_path.read_bytes())
    assert request(service, ca, "GET", "/etc/passwd")[0] == 404


def test_broker_config_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetgen(["broker", "config", "--out", str(tmp_path / "o"), "--pki", str(tmp_path / "none")]) == 1
    assert "fleetgen ca init" in capsys.readouterr().err
    assert fleetgen(["ca", "init", "--pki", str(tmp_path / "pki")]) == 0
    assert fleetgen(["broker", "config", "--out", str(tmp_path / "o"), "--pki", str(tmp_path / "pki"),
                     "--port", "70000"]) == 2
    assert "--port 70000: not a TCP port" in capsys.readouterr().err


@pytest.mark.parametrize(("with_repo", "message"), [
    (False, "enroll.broker_url: required with enroll.listen"),
    (True, "no device CA in"),
])
def test_serve_refuses_an_incomplete_enrollment_setup(with_repo: bool, message: str, tmp_path: Path,
                                                      repo: Path) -> None:
    argv = [sys.executable, "-m", "controller", "serve", "--enroll", "127.0.0.1:0",
            "--state-dir", str(tmp_path / "s"), "--broker", "mqtt://127.0.0.1:1"]
    env = dict(os.environ)
    if with_repo:
        argv += ["--repo", str(repo)]
        env["FLEETGEN_ENROLL_BROKER_URL"] = "mqtts://fleet:8883"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode in (1, 2) and message in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("argv", [["ca", "init"], ["device", "add", "x"], ["device", "revoke", "x"],
                                  ["broker", "config", "--out", "o"]])
def test_one_shot_commands_log_at_warning(argv: list[str]) -> None:
    from controller.cli import build_parser

    assert build_parser().parse_args(argv).log_level == "WARNING"
    assert build_parser().parse_args(["serve"]).log_level == "INFO"
