"""`fleetgen device`: enroll and revoke devices.

    fleetgen device add ID [--group G] [--ttl 24h] [--json]   prints a one-time enrollment token
    fleetgen device revoke ID                                 revokes its certificates, re-signs the CRL
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from controller.cli._trustargs import duration
from controller.cli.ca import add_pki_option, pki_dir

if TYPE_CHECKING:
    from controller.enroll import Enrollment

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("device", help="enroll and revoke devices")
    verbs = p.add_subparsers(dest="device_command", metavar="VERB", required=True)

    add = verbs.add_parser("add", parents=[common], help="a one-time enrollment token for a new device")
    add.add_argument("device_id", metavar="ID", help="device id, [a-z0-9][a-z0-9-]{0,62}")
    add.add_argument("--group", metavar="G", help="group the device joins when it enrolls")
    add.add_argument("--ttl", type=duration, default=86400, metavar="DUR",
                     help="how long the token stays valid (default 24h; at most 30d)")
    add.add_argument("--json", action="store_true", help="machine-readable output")
    _common(add)
    add.set_defaults(func=run_add, log_level="WARNING")  # one-shot: its output is the answer

    revoke = verbs.add_parser("revoke", parents=[common], help="revoke a device's certificate (CRL)")
    revoke.add_argument("device_id", metavar="ID")
    _common(revoke)
    revoke.set_defaults(func=run_revoke, log_level="WARNING")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    add_pki_option(p)


def _enrollment(args: argparse.Namespace) -> Enrollment:
    from agent.cli import require_extra

    require_extra("device", "controller", "sqlalchemy")
    from controller.cli.serve import load
    from controller.enroll import Enrollment
    from controller.pki import CertificateAuthority
    from controller.store import Store

    config = load(args)
    return Enrollment(Store(config.db_url), CertificateAuthority.open(pki_dir(args)),
                      cert_days=config.enroll.cert_days)


def run_add(args: argparse.Namespace) -> int:
    from controller.enroll import iso_utc

    enrollment = _enrollment(args)
    try:
        new = enrollment.add_device(args.device_id, ttl_s=args.ttl, group=args.group)
    finally:
        enrollment.store.close()
    if args.json:
        print(json.dumps({"schema": SCHEMA, "device_id": args.device_id, "token": str(new.token),
                          "expires": new.expires, "group": new.group}))
        return 0
    print(new.token)
    print(f"one-time token for {args.device_id}, valid until {iso_utc(new.expires)}; on the device:\n"
          f"  fleetgen-agent install --controller https://CONTROLLER:8443 --token {new.token}", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    enrollment = _enrollment(args)
    try:
        done = enrollment.revoke(args.device_id)
    finally:
        enrollment.store.close()
    what = (f"revoked {len(done.serials)} certificate(s) of {done.device_id}" if done.serials
            else f"{done.device_id}: no unrevoked certificate")
    if done.already:
        what += f" ({done.already} revoked before)"
    if done.tokens_cancelled:
        what += f", cancelled {done.tokens_cancelled} open token(s)"
    print(what)
    print(f"CRL re-signed: {done.crl}; the broker refuses {done.device_id} from its next reload "
          "(fleetgen-crl.path does it; by hand: systemctl reload mosquitto)", file=sys.stderr)
    return 0
