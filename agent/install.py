"""Installing the agent as a system service (`fleetgen-agent install` / `uninstall`).

`plan_files` is the pure part: from the device id, broker URL, board and venv it gives every
file the installation consists of (path under the root, bytes, mode). `Installer` is the
adapter: it writes those files (only when their content differs, so a second run changes
nothing), runs systemd's own tools, and removes them again.

    ROOT/etc/fleetgen/agent.toml                                the agent's config
    ROOT/etc/sysusers.d/fleetgen.conf, etc/tmpfiles.d/...       its user, directories, RAPL access
    ROOT/etc/systemd/system/fleetgen-agent.service              the unit (systemd/ of this release)
    ROOT/etc/systemd/system/fleetgen-agent.service.d/10-board.conf   the board's device nodes
    ROOT/var/lib/fleetgen/pki/, trust/                          identity and pinned root (enrollment)

`--root DIR` stages all of it under DIR (an image, a package, a test); the unit is then
enabled with `systemctl --root` and systemd creates the user at the image's first boot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.errors import FleetgenError
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

UNIT = "fleetgen-agent.service"
USER = "fleetgen"
DEFAULT_VENV = "/opt/fleetgen/venv"
CONFIG = PurePosixPath("/etc/fleetgen/agent.toml")
STATE = PurePosixPath("/var/lib/fleetgen")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
DROP_IN = UNIT_DIR / f"{UNIT}.d" / "10-board.conf"
SYSUSERS = PurePosixPath("/etc/sysusers.d/fleetgen.conf")
TMPFILES = PurePosixPath("/etc/tmpfiles.d/fleetgen.conf")


class InstallError(FleetgenError):
    """The installation cannot be done or undone (the message says what and where)."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    path: PurePosixPath  # absolute, as on the device
    data: bytes
    mode: int = 0o644


def units_dir() -> Path:
    """systemd/ of this release: the source tree's, or the one a wheel installs under share/."""
    for candidate in (Path(__file__).resolve().parents[1] / "systemd", Path(sys.prefix) / "share/fleetgen/systemd"):
        if (candidate / UNIT).is_file():
            return candidate
    raise InstallError(f"cannot find {UNIT} (looked in the source tree and {sys.prefix}/share/fleetgen/systemd)")


def board_family(profile_id: str) -> str:
    """'jetson-orin-nano' -> 'jetson': the drop-in systemd/boards/FAMILY.conf, if there is one."""
    return profile_id.split("-", 1)[0]


def render_config(device_id: str, broker_url: str, profile: str) -> bytes:
    pki = STATE / "pki"
    return "\n".join([
        "# Written by `fleetgen-agent install`; a re-run rewrites it (README: Run an agent).",
        f'device_id = "{device_id}"',
        f'state_dir = "{STATE}"',
        "",
        "[mqtt]",
        f'url = "{broker_url}"',
        f'ca_file = "{pki}/ca.pem"',
        f'cert_file = "{pki}/{device_id}.pem"',
        f'key_file = "{pki}/{device_id}.key"',
        "",
        "[board]",
        f'profile = "{profile}"',
        "",
    ]).encode()


def plan_files(device_id: str, broker_url: str, profile: str, board: str, venv: str, units: Path) -> list[FileSpec]:
    """Every file of the installation except the enrolled identity (which only enrollment makes).

    `profile` is what agent.toml says ("auto": the agent detects at each start); `board` the
    profile it is installed for now, which picks the unit's drop-in.
    """
    unit = (units / UNIT).read_text().replace(f"{DEFAULT_VENV}/", f"{venv.rstrip('/')}/")
    files = [
        FileSpec(CONFIG, render_config(device_id, broker_url, profile)),
        FileSpec(SYSUSERS, (units / "sysusers.d/fleetgen.conf").read_bytes()),
        FileSpec(TMPFILES, (units / "tmpfiles.d/fleetgen.conf").read_bytes()),
        FileSpec(UNIT_DIR / UNIT, unit.encode()),
    ]
    drop_in = units / "boards" / f"{board_family(board)}.conf"
    if drop_in.is_file():
        files.append(FileSpec(DROP_IN, drop_in.read_bytes()))
    return files


def under(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


Runner = Callable[[Sequence[str]], None]


def run_command(argv: Sequence[str]) -> None:
    """Run a system tool; InstallError with its stderr when it fails."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{argv[0]}: {e}") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise InstallError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail[-1] if detail else ''}")


@dataclass
class Installer:
    """Writes and removes the files of a plan under `root` and drives systemd.

    `staged` (a --root other than /): systemd tools are used in offline mode only
    (`systemctl --root`), nothing is started and no user is created. `systemd_running`
    says whether systemd is PID 1 here; without it the files are written and the user
    told how to start the agent by hand.
    """

    root: Path
    staged: bool
    systemd_running: bool
    run: Runner = run_command
    which: Callable[[str], str | None] = shutil.which

    def write(self, files: Sequence[FileSpec]) -> list[PurePosixPath]:
        """Write the files that differ; returns the ones it changed."""
        changed: list[PurePosixPath] = []
        for spec in files:
            target = under(self.root, spec.path)
            try:
                same = target.read_bytes() == spec.data and (target.stat().st_mode & 0o777) == spec.mode
            except OSError:
                same = False
            if same:
                continue
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            atomic_write(target, spec.data, mode=spec.mode)
            os.chmod(target, spec.mode)
            changed.append(spec.path)
        return changed

    def create_user(self) -> None:
        """The system user and directories, from the sysusers.d/tmpfiles.d files just written."""
        if self.staged:
            return  # systemd-sysusers.service and systemd-tmpfiles-setup do it at first boot
        if self.which("systemd-sysusers"):
            self.run(["systemd-sysusers", str(SYSUSERS)])
        else:
            import pwd

            try:
                pwd.getpwnam(USER)
            except KeyError:
                self.run(["useradd", "--system", "--home-dir", str(STATE), "--no-create-home",
                          "--shell", "/usr/sbin/nologin", USER])
        if self.which("systemd-tmpfiles"):
            self.run(["systemd-tmpfiles", "--create", str(TMPFILES)])

    def own_state(self) -> None:
        """Give the state directory to the agent's user (on the live system only).

        The unit's StateDirectory= would do it at the first start, but only when the top
        directory's owner differs; doing it here also serves an agent started by hand.
        """
        if self.staged:
            return
        import pwd

        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            return
        state = under(self.root, STATE)
        for dirpath, dirnames, filenames in os.walk(state):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))]:
                os.lchown(name, entry.pw_uid, entry.pw_gid)

    def enable(self, restart: bool) -> None:
        if self.staged:
            if self.which("systemctl"):
                self.run(["systemctl", f"--root={self.root}", "enable", UNIT])
            return
        if not self.systemd_running:
            return
        self.run(["systemctl", "daemon-reload"])
        self.run(["systemctl", "enable", UNIT])
        self.run(["systemctl", "restart" if restart else "start", UNIT])

    def disable(self) -> None:
        if self.staged:
            if self.which("systemctl") and under(self.root, UNIT_DIR / UNIT).exists():
                self.run(["systemctl", f"--root={self.root}", "disable", UNIT])
            return
        if self.systemd_running:
            self.run(["systemctl", "disable", "--now", UNIT])

    def remove(self, purge: bool) -> list[PurePosixPath]:
        """Remove the installed files; with `purge` also the config and the state (identity,
        trust, bundles). The system user stays (files elsewhere may still be owned by it)."""
        paths = [DROP_IN, UNIT_DIR / UNIT, SYSUSERS, TMPFILES]
        if purge:
            paths.append(CONFIG)
        removed: list[PurePosixPath] = []
        for path in paths:
            target = under(self.root, path)
            if target.exists() or target.is_symlink():
                target.unlink()
                removed.append(path)
        drop_dir = under(self.root, DROP_IN.parent)
        if drop_dir.is_dir() and not any(drop_dir.iterdir()):
            drop_dir.rmdir()
        if purge:
            for directory in (STATE, CONFIG.parent):
                target = under(self.root, directory)
                if target.is_dir():
                    shutil.rmtree(target)
                    removed.append(directory)
        if not self.staged and self.systemd_running:
            self.run(["systemctl", "daemon-reload"])
        return removed


def systemd_is_running() -> bool:
    """sd_booted(): systemd is PID 1 when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()
