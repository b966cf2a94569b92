"""`fleetgen-agent install` and `uninstall`: the agent as a system service (docs/install.md).

    fleetgen-agent install --controller https://HOST:8443 --token TOKEN [--board auto|PROFILE]
                           [--root DIR] [--venv DIR]
    fleetgen-agent uninstall [--purge] [--root DIR]

Enrolls first and writes nothing when enrollment fails; then writes the config, unit, board
drop-in, sysusers.d/tmpfiles.d files, creates the user and enables and starts the unit. A
second run with the same token finds the identity it enrolled, does not contact the
controller and changes nothing; a new token re-enrolls (a new key and certificate).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("install", help="enroll this device and install the agent as a systemd service")
    p.add_argument("--controller", required=True, metavar="URL",
                   help="the controller's enrollment endpoint, https://HOST[:8443]")
    p.add_argument("--token", required=True, help="the one-time token `fleetgen device add` printed")
    p.add_argument("--board", default="auto", metavar="PROFILE",
                   help="board profile (default auto: detected; picks the unit's device drop-in)")
    _root_option(p)
    p.add_argument("--venv", metavar="DIR",
                   help="virtualenv the unit runs (default: this one; /opt/fleetgen/venv with --root)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run_install)

    u = sub.add_parser("uninstall", help="stop and remove the agent service (state kept unless --purge)")
    u.add_argument("--purge", action="store_true",
                   help="also remove /etc/fleetgen and /var/lib/fleetgen (identity, trust, models)")
    _root_option(u)
    u.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    u.set_defaults(func=run_uninstall)


def _root_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="DIR",
                   help="stage every file under DIR instead of / (images, packages); starts nothing")


def _target(args: argparse.Namespace) -> tuple[Path, bool]:
    from agent.errors import UsageError

    root = Path(args.root).resolve() if args.root else Path("/")
    staged = root != Path("/")
    if not staged and os.geteuid() != 0:
        raise UsageError(f"{args.func.__name__.removeprefix('run_')} changes the system: run it as root "
                         "(or stage the files with --root DIR)")
    return root, staged


def _profile(board: str, root: Path) -> tuple[str, str]:
    """(what agent.toml says, the profile whose drop-in is installed)."""
    from agent.errors import UsageError
    from firmware.profile import load_profiles

    if board == "auto":
        from firmware.detect import detect_board

        return "auto", detect_board(root).profile.id
    known = sorted(p.id for p in load_profiles())
    if board not in known:
        raise UsageError(f"--board {board!r}: unknown profile (known: auto, {', '.join(known)})")
    return board, board


def _director_keys(root: bytes) -> list[str]:
    import msgspec

    from agent.trust.director import ROOT_FIELD

    try:
        signed = msgspec.json.decode(root)["signed"]
        return sorted(signed.get(ROOT_FIELD, {}).get("keys", {}))
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return []


def run_install(args: argparse.Namespace) -> int:
    import msgspec

    from agent.cli.provision import pin_root
    from agent.enroll import (
        Controller,
        DevicePki,
        EnrollmentRecord,
        EnrollToken,
        already_enrolled,
        enroll,
        read_record,
    )
    from agent.fsutil import atomic_write
    from agent.install import (
        DEFAULT_VENV,
        STATE,
        UNIT,
        Installer,
        board_family,
        plan_files,
        systemd_is_running,
        units_dir,
    )
    from agent.install import under as path_under
    from agent.trust.layout import TrustPaths

    token = EnrollToken.parse(args.token)
    controller = Controller.parse(args.controller)
    root, staged = _target(args)
    configured, detected = _profile(args.board, root)
    venv = args.venv or (DEFAULT_VENV if staged else sys.prefix)
    units = units_dir()
    state = path_under(root, STATE)
    trust = TrustPaths(state)
    pki = DevicePki(state / "pki", token.device_id)
    record_path = pki.dir / "enrollment.json"
    record = read_record(record_path)
    enrolled_now = False
    if (record is not None and record.device_id == token.device_id and record.token_sha256 == token.secret_hash
            and trust.provisioned and already_enrolled(pki, token.ca_sha256)):
        print(f"{token.device_id}: already enrolled ({pki.cert}); not contacting the controller")
        broker_url = record.broker_url
    else:
        answer = enroll(controller, token)
        # Root first, identity last: an identity on disk means the enrollment is complete.
        version = pin_root(state, answer.root, f"enrollment at {controller}", force=True)
        answer.write(pki.dir)
        atomic_write(record_path, msgspec.json.encode(EnrollmentRecord(
            device_id=answer.device_id, broker_url=answer.broker_url, controller=str(controller),
            token_sha256=token.secret_hash)), mode=0o644)
        keys = _director_keys(answer.root)
        print(f"{token.device_id}: enrolled with {controller}; certificate {pki.cert}")
        print(f"  trusts root metadata v{version}; director key {', '.join(k[:16] for k in keys) or '(none)'}")
        broker_url = answer.broker_url
        enrolled_now = True
    installer = Installer(root, staged, systemd_is_running())
    changed = installer.write(plan_files(token.device_id, broker_url, configured, detected, venv, units))
    installer.create_user()
    installer.own_state()
    installer.enable(restart=bool(changed) or enrolled_now)
    drop_in = board_family(detected) if (units / "boards" / f"{board_family(detected)}.conf").is_file() else None
    print(f"  broker {broker_url}; board {detected}" + (f" (drop-in for {drop_in})" if drop_in else ""))
    print(f"  {len(changed)} file(s) written" + (": " + ", ".join(map(str, changed)) if changed else
                                                 " (all already as they should be)"))
    if staged:
        print(f"staged under {root}: nothing started here; at the image's first boot systemd creates "
              f"the user fleetgen and starts {UNIT}")
    elif installer.systemd_running:
        print(f"{UNIT} enabled and started; check it with:\n"
              f"  systemctl status {UNIT}\n  journalctl -u {UNIT} -f")
    else:
        print(f"systemd is not running here: the files are in place, start the agent by hand:\n"
              f"  runuser -u fleetgen -- {venv}/bin/fleetgen-agent run --config /etc/fleetgen/agent.toml")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    from agent.install import UNIT, Installer, systemd_is_running

    root, staged = _target(args)
    installer = Installer(root, staged, systemd_is_running())
    installer.disable()
    removed = installer.remove(purge=args.purge)
    print(f"{UNIT} removed" + (f": {', '.join(map(str, removed))}" if removed else " (nothing was installed)"))
    if not args.purge:
        print("kept /etc/fleetgen and /var/lib/fleetgen (identity, trust, models); --purge removes them")
    return 0
