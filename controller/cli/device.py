"""`fleetgen device`: enroll, revoke and look at devices.

    fleetgen device add ID [--group G] [--ttl 24h] [--json]   prints a one-time enrollment token
    fleetgen device revoke ID                                 revokes its certificates, re-signs the CRL
    fleetgen device ls [--json]                               the registry, with tags
    fleetgen device show ID [--json]                          reported, latest sample, desired state, budget
    fleetgen device tag ID TAG... [--rm]                      add, or with --rm remove, controller-side tags
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from controller.cli._storeargs import add_db_option, emit_json, open_store, table
from controller.cli._trustargs import duration
from controller.cli.ca import add_pki_option, pki_dir

if TYPE_CHECKING:
    from controller.enroll import Enrollment

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("device", help="enroll, revoke, list, show and tag devices")
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

    ls = verbs.add_parser("ls", parents=[common], help="list devices with their tags")
    add_db_option(ls)
    ls.set_defaults(func=run_ls)
    show = verbs.add_parser("show", parents=[common], help="everything known about one device")
    show.add_argument("device", metavar="ID")
    add_db_option(show)
    show.set_defaults(func=run_show)
    tag = verbs.add_parser("tag", parents=[common], help="add (or --rm) controller-side tags")
    tag.add_argument("device", metavar="ID")
    tag.add_argument("tags", nargs="+", metavar="TAG")
    tag.add_argument("--rm", action="store_true", help="remove the tags instead")
    add_db_option(tag, json_output=False)
    tag.set_defaults(func=run_tag)


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
    print(f"{done.device_id}: out of every group (explicitly in: {', '.join(done.fleet.groups) or 'none'}) and "
          f"of unfinished rollouts ({', '.join(map(str, done.fleet.rollouts)) or 'none'}); no more director documents")
    print(f"CRL re-signed: {done.crl}; the broker refuses {done.device_id} from its next reload "
          "(fleetgen-crl.path does it; by hand: systemctl reload mosquitto)", file=sys.stderr)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        details = store.repos.devices.list()
    finally:
        store.close()
    if args.json:
        emit_json("devices", [{"id": d.id, "board": d.board, "online": d.online, "last_seen": d.last_seen,
                               "active_bundle": d.active_bundle, "health": d.health, "tags": list(d.tags),
                               "power_budget_w": d.power_budget_w, "revoked": d.revoked} for d in details])
        return 0
    print(table(("DEVICE", "BOARD", "STATUS", "BUNDLE", "HEALTH", "BUDGET W", "TAGS"),
                [(d.id, d.board, "revoked" if d.revoked else "online" if d.online else "offline",
                  d.active_bundle, d.health,
                  d.power_budget_w, ",".join(d.tags)) for d in details]))
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        d = store.repos.devices.detail(args.device)
    finally:
        store.close()
    doc = {"id": d.id, "board": d.board, "online": d.online, "last_seen": d.last_seen,
           "agent_version": d.agent_version, "active_bundle": d.active_bundle, "health": d.health,
           "revoked": d.revoked, "tags": list(d.tags), "labels": dict(d.labels), "desired": {
               "version": d.desired_version, "target": d.desired_target, "power_budget_w": d.power_budget_w},
           "last_sample": d.last_sample, "reported": d.reported}
    if args.json:
        emit_json("device", doc)
        return 0
    seen = f"{max(0, int(time.time() - d.last_seen))}s ago" if d.last_seen else "never"
    sample = d.last_sample or {}
    lines = [
        f"device     {d.id} ({'revoked' if d.revoked else 'online' if d.online else 'offline'}, seen {seen})",
        f"board      {d.board or '-'}   agent {d.agent_version or '-'}",
        f"running    {d.active_bundle or '-'}   health {d.health}",
        f"desired    v{d.desired_version or 0} -> {d.desired_target or '-'}   budget {d.power_budget_w or '-'} W",
        f"tags       {', '.join(d.tags) or '-'}",
        f"labels     {', '.join(f'{k}={v}' for k, v in d.labels.items()) or '-'}",
        f"last       power {sample.get('power_w', '-')} W, cpu {sample.get('cpu_pct', '-')}%",
    ]
    print("\n".join(lines))
    return 0


def run_tag(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        if args.rm:
            tags = store.repos.devices.tag(args.device, remove=args.tags)
        else:
            tags = store.repos.devices.tag(args.device, add=args.tags)
    finally:
        store.close()
    print(f"{args.device}: tags {', '.join(tags) or '(none)'}", file=sys.stderr)
    return 0
