"""`fleetgen-agent install --root DIR` against a running enrollment endpoint: the exact
files, a clean `systemd-analyze verify`, idempotence, refusals that write nothing, uninstall."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.cli import main as agent_cli
from agent.enroll import EnrollToken
from controller.enroll import Enrollment, EnrollmentService
from controller.pki import CertificateAuthority

REPO = Path(__file__).resolve().parents[2]
VENV = str(Path(sys.executable).parent.parent)
FIXTURES = REPO / "firmware" / "testdata"


def install(service: EnrollmentService, token: object, root: Path, *extra: str) -> int:
    return agent_cli(["install", "--controller", f"https://127.0.0.1:{service.port}", "--token", str(token),
                      "--root", str(root), "--venv", VENV, *extra])


def tree(root: Path) -> dict[str, str]:
    """Every path under root: 'file 0644', 'dir 0700' or 'link -> target'."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        else:
            kind = "dir" if path.is_dir() else "file"
            out[rel] = f"{kind} {stat.S_IMODE(path.stat().st_mode):04o}"
    return out


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


EXPECTED = {
    "etc": "dir 0755",
    "etc/fleetgen": "dir 0755",
    "etc/fleetgen/agent.toml": "file 0644",
    "etc/sysusers.d": "dir 0755",
    "etc/sysusers.d/fleetgen.conf": "file 0644",
    "etc/tmpfiles.d": "dir 0755",
    "etc/tmpfiles.d/fleetgen.conf": "file 0644",
    "etc/systemd": "dir 0755",
    "etc/systemd/system": "dir 0755",
    "etc/systemd/system/fleetgen-agent.service": "file 0644",
    "etc/systemd/system/fleetgen-agent.service.d": "dir 0755",
    "etc/systemd/system/fleetgen-agent.service.d/10-board.conf": "file 0644",
    "var": "dir 0755",
    "var/lib": "dir 0755",
    "var/lib/fleetgen": "dir 0700",
    "var/lib/fleetgen/downloads": "dir 0700",
    "var/lib/fleetgen/pki": "dir 0700",
    "var/lib/fleetgen/pki/ca.pem": "file 0644",
    "var/lib/fleetgen/pki/jet-1.pem": "file 0644",
    "var/lib/fleetgen/pki/jet-1.key": "file 0600",
    "var/lib/fleetgen/pki/enrollment.json": "file 0644",
    "var/lib/fleetgen/trust": "dir 0700",
    "var/lib/fleetgen/trust/metadata": "dir 0700",
    "var/lib/fleetgen/trust/root.pinned.json": "file 0600",
}
WANTS = "etc/systemd/system/multi-user.target.wants"


@pytest.fixture(autouse=True)
def _umask() -> object:
    old = os.umask(0o022)  # what a root shell has; the modes above assume it
    yield
    os.umask(old)


def test_install_root_lays_out_exactly_the_expected_files(service: EnrollmentService, enrollment: Enrollment,
                                                          repo: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "image"
    token = enrollment.add_device("jet-1").token
    assert install(service, token, root, "--board", "jetson-orin-nano") == 0
    out = capsys.readouterr().out
    assert "enrolled with" in out and "staged under" in out
    expected = dict(EXPECTED)
    if shutil.which("systemctl"):  # enabled offline, as for an image
        expected[WANTS] = "dir 0755"
        expected[f"{WANTS}/fleetgen-agent.service"] = "link -> /etc/systemd/system/fleetgen-agent.service"
    assert tree(root) == expected
    files = contents(root)
    assert files["var/lib/fleetgen/trust/root.pinned.json"] == (repo / "metadata" / "1.root.json").read_bytes()
    assert files["etc/systemd/system/fleetgen-agent.service.d/10-board.conf"] == \
        (REPO / "systemd" / "boards" / "jetson.conf").read_bytes()
    unit = files["etc/systemd/system/fleetgen-agent.service"].decode()
    assert f"ExecStart={VENV}/bin/fleetgen-agent run --config /etc/fleetgen/agent.toml" in unit
    config = tomllib.loads(files["etc/fleetgen/agent.toml"].decode())
    assert config == {
        "device_id": "jet-1", "state_dir": "/var/lib/fleetgen",
        "mqtt": {"url": "mqtts://127.0.0.1:8883", "ca_file": "/var/lib/fleetgen/pki/ca.pem",
                 "cert_file": "/var/lib/fleetgen/pki/jet-1.pem", "key_file": "/var/lib/fleetgen/pki/jet-1.key"},
        "board": {"profile": "jetson-orin-nano"},
    }

    # A second run changes nothing, and needs no controller: the token is spent already.
    before = contents(root), tree(root)
    assert install(service, token, root, "--board", "jetson-orin-nano") == 0
    assert "already enrolled" in capsys.readouterr().out
    assert (contents(root), tree(root)) == before


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(("board", "drop_in"), [("jetson-orin-nano", "jetson"), ("kria-kv260", "kria")])
def test_installed_units_verify_without_output(board: str, drop_in: str, service: EnrollmentService,
                                               enrollment: Enrollment, tmp_path: Path) -> None:
    root = tmp_path / "image"
    assert install(service, enrollment.add_device("dev-v").token, root, "--board", board) == 0
    unit = root / "etc/systemd/system/fleetgen-agent.service"
    board_conf = unit.parent / "fleetgen-agent.service.d" / "10-board.conf"
    assert board_conf.read_bytes() == (REPO / "systemd" / "boards" / f"{drop_in}.conf").read_bytes()
    # verify reads the drop-in beside the unit (a bad key in it is reported: PITFALLS, stderr).
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "" and verify.stdout.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-2000:]  # the drop-in keeps exposure <= 2.0
    board_conf.write_text(board_conf.read_text() + "NoSuchKey=1\n")
    bad = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert "NoSuchKey" in bad.stderr  # so the clean run above did read the drop-in


def test_board_auto_detects_and_the_agent_keeps_detecting(service: EnrollmentService, enrollment: Enrollment,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "kria"
    shutil.copytree(FIXTURES / "kria-kv260", root, symlinks=True)
    assert install(service, enrollment.add_device("kv-1").token, root) == 0
    drop_in = root / "etc/systemd/system/fleetgen-agent.service.d/10-board.conf"
    assert drop_in.read_bytes() == (REPO / "systemd" / "boards" / "kria.conf").read_bytes()
    assert tomllib.loads((root / "etc/fleetgen/agent.toml").read_text())["board"] == {"profile": "auto"}


def test_a_generic_board_gets_no_drop_in(service: EnrollmentService, enrollment: Enrollment, tmp_path: Path) -> None:
    root = tmp_path / "x86"
    assert install(service, enrollment.add_device("box-1").token, root, "--board", "generic-x86_64") == 0
    assert not (root / "etc/systemd/system/fleetgen-agent.service.d").exists()


def _refused(capsys: pytest.CaptureFixture[str], code: int, expect_code: int, message: str, root: Path) -> None:
    err = capsys.readouterr().err
    assert code == expect_code, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists() or list(root.rglob("*")) == [], sorted(map(str, root.rglob("*")))


def test_reused_token_is_refused_and_writes_nothing(service: EnrollmentService, enrollment: Enrollment,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = enrollment.add_device("dup-1").token
    assert install(service, token, tmp_path / "first") == 0
    capsys.readouterr()
    root = tmp_path / "second"
    _refused(capsys, install(service, token, root), 1, "was already used at", root)


def test_expired_token_is_refused(service: EnrollmentService, enrollment: Enrollment, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    token = enrollment.add_device("old-1", ttl_s=60).token
    real = enrollment.clock
    enrollment.clock = lambda: real() + 61
    root = tmp_path / "image"
    _refused(capsys, install(service, token, root), 1, "expired at", root)


def test_token_pinning_another_ca_is_refused_before_it_is_sent(service: EnrollmentService, enrollment: Enrollment,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    real = enrollment.add_device("pin-1").token
    other = CertificateAuthority.create(tmp_path / "other").fingerprint()
    root = tmp_path / "image"
    _refused(capsys, install(service, EnrollToken(real.device_id, real.secret, other), root), 1,
             "but the token pins", root)
    # The token never reached the controller: it still works.
    assert install(service, real, root) == 0


def test_unreachable_controller_and_bad_input(tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.demo.brokers import free_port

    token = EnrollToken("lost-1", "B" * 43, CertificateAuthority.open(pki).fingerprint())
    root = tmp_path / "image"
    code = agent_cli(["install", "--controller", f"https://127.0.0.1:{free_port()}", "--token", str(token),
                      "--root", str(root)])
    _refused(capsys, code, 1, "cannot reach the controller at https://127.0.0.1:", root)
    code = agent_cli(["install", "--controller", "https://127.0.0.1:1", "--token", "not-a-token", "--root", str(root)])
    _refused(capsys, code, 2, "not a fleetgen enrollment token", root)
    code = agent_cli(["install", "--controller", "mqtts://127.0.0.1", "--token", str(token), "--root", str(root)])
    _refused(capsys, code, 2, "expected https://HOST[:PORT]", root)
    code = agent_cli(["install", "--controller", "https://127.0.0.1", "--token", str(token), "--root", str(root),
                      "--board", "toaster"])
    _refused(capsys, code, 2, "--board 'toaster': unknown profile", root)


def test_uninstall_keeps_state_unless_purged(service: EnrollmentService, enrollment: Enrollment, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "image"
    token = enrollment.add_device("jet-1").token
    assert install(service, token, root, "--board", "jetson-orin-nano") == 0
    assert agent_cli(["uninstall", "--root", str(root)]) == 0
    left = set(tree(root))
    assert not {p for p in left if p.startswith(("etc/systemd/system/", "etc/sysusers.d/", "etc/tmpfiles.d/"))
                and not p.endswith(".wants")}
    assert {"etc/fleetgen/agent.toml", "var/lib/fleetgen/pki/jet-1.key",
            "var/lib/fleetgen/trust/root.pinned.json"} <= left
    # Reinstalling needs no new token: the identity was kept.
    assert install(service, token, root, "--board", "jetson-orin-nano") == 0
    assert "already enrolled" in capsys.readouterr().out
    assert agent_cli(["uninstall", "--purge", "--root", str(root)]) == 0
    assert not (root / "var/lib/fleetgen").exists() and not (root / "etc/fleetgen").exists()


def _plan() -> list[object]:
    from agent.install import plan_files, units_dir

    return plan_files("live-1", "mqtts://fleet:8883", "auto", "jetson-orin-nano", VENV, units_dir())  # type: ignore[return-value]


@pytest.mark.parametrize("systemd_running", [True, False])
def test_live_install_drives_systemd_and_a_rerun_only_starts(systemd_running: bool, tmp_path: Path) -> None:
    """On / (here a temp dir standing in, with the system tools recorded, not run)."""
    from agent.install import Installer

    ran: list[list[str]] = []
    inst = Installer(tmp_path, staged=False, systemd_running=systemd_running, run=lambda argv: ran.append(list(argv)),
                     which=lambda tool: f"/usr/bin/{tool}")
    changed = inst.write(_plan())  # type: ignore[arg-type]
    inst.create_user()
    inst.enable(restart=bool(changed))
    setup = [["systemd-sysusers", "/etc/sysusers.d/fleetgen.conf"],
             ["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/fleetgen.conf"]]
    service = [["systemctl", "daemon-reload"], ["systemctl", "enable", "fleetgen-agent.service"]]
    assert ran == setup + ([*service, ["systemctl", "restart", "fleetgen-agent.service"]] if systemd_running else [])
    ran.clear()
    assert inst.write(_plan()) == []  # type: ignore[arg-type]
    inst.enable(restart=False)
    assert ran == ([*service, ["systemctl", "start", "fleetgen-agent.service"]] if systemd_running else [])


def test_without_sysusers_the_user_comes_from_useradd(tmp_path: Path) -> None:
    import pwd

    from agent.install import Installer

    ran: list[list[str]] = []
    inst = Installer(tmp_path, staged=False, systemd_running=False, run=lambda argv: ran.append(list(argv)),
                     which=lambda tool: None)
    inst.create_user()
    try:
        pwd.getpwnam("fleetgen")
        assert ran == []
    except KeyError:
        assert ran == [["useradd", "--system", "--home-dir", "/var/lib/fleetgen", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", "fleetgen"]]


def test_install_on_the_live_system_needs_root(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = agent_cli(["install", "--controller", "https://127.0.0.1:1", "--token",
                      "fgt1.x-1." + "A" * 43 + "." + "0" * 64])
    err = capsys.readouterr().err
    assert code == 2 and "run it as root (or stage the files with --root DIR)" in err, err


def test_a_new_token_re_enrolls_a_revoked_device(service: EnrollmentService, enrollment: Enrollment,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "image"
    assert install(service, enrollment.add_device("re-1").token, root) == 0
    cert = root / "var/lib/fleetgen/pki/re-1.pem"
    first = cert.read_bytes()
    enrollment.revoke("re-1")
    capsys.readouterr()
    assert install(service, enrollment.add_device("re-1").token, root) == 0
    assert "enrolled with" in capsys.readouterr().out
    assert cert.read_bytes() != first


def test_units_come_from_the_wheels_share_dir_outside_a_source_tree(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    import agent.install as install_module

    share = tmp_path / "venv" / "share" / "fleetgen" / "systemd"
    share.mkdir(parents=True)
    (share / "fleetgen-agent.service").write_text("[Service]\n")
    monkeypatch.setattr(install_module, "__file__", str(tmp_path / "site-packages" / "agent" / "install.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert install_module.units_dir() == share
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))
    with pytest.raises(install_module.InstallError, match=r"cannot find fleetgen-agent\.service"):
        install_module.units_dir()
