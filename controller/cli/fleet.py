"""`fleetgen fleet ls`: the fleet as a table, or `--json`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store needs the controller extra; `fleetgen --help` must not
    from controller.store import DeviceView

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fleet", help="inspect the fleet")
    verbs = p.add_subparsers(dest="fleet_command", metavar="VERB", required=True)
    ls = verbs.add_parser("ls", parents=[common], help="list devices")
    ls.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_ls, log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "never"
    s = max(0, int(now - ts))
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def format_table(devices: list[DeviceView], now: float) -> str:
    header = ("DEVICE", "BOARD", "STATUS", "LAST SEEN", "AGENT", "BUNDLE")
    rows = [
        (d.id, d.board or "-", "online" if d.online else "offline", _ago(d.last_seen, now),
         d.agent_version or "-", d.active_bundle or "-")
        for d in devices
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def to_json(devices: list[DeviceView]) -> str:
    return json.dumps({
        "schema": SCHEMA,
        "devices": [
            {"id": d.id, "board": d.board, "online": d.online, "last_seen": d.last_seen,
             "agent_version": d.agent_version, "active_bundle": d.active_bundle, "health": d.health}
            for d in devices
        ],
    }, indent=2)


def run_ls(args: argparse.Namespace) -> int:
    from agent.cli import require_extra

    require_extra("fleet ls", "controller", "sqlalchemy")
    from controller.cli.serve import load
    from controller.store import open_existing

    config = load(args)
    store = open_existing(config.db_url)  # a read-only command creates nothing
    try:
        devices = store.devices()
    finally:
        store.close()
    sys.stdout.write((to_json(devices) if args.json else format_table(devices, time.time())) + "\n")
    return 0
