"""`fleetgen device`: one device of the registry.

    fleetgen device ls [--json]             (the registry, with tags)
    fleetgen device show ID [--json]        (reported, latest sample, desired state, budget)
    fleetgen device tag ID TAG... [--rm]    (add, or with --rm remove, controller-side tags)
"""

from __future__ import annotations

import argparse
import sys
import time

from controller.cli._storeargs import add_db_option, emit_json, open_store, table


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("device", help="devices of the registry")
    verbs = p.add_subparsers(dest="device_command", metavar="VERB", required=True)
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


def run_ls(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        details = [store.repos.devices.detail(d) for d in store.repos.devices.ids()]
    finally:
        store.close()
    if args.json:
        emit_json("devices", [{"id": d.id, "board": d.board, "online": d.online, "last_seen": d.last_seen,
                               "active_bundle": d.active_bundle, "health": d.health, "tags": list(d.tags),
                               "power_budget_w": d.power_budget_w} for d in details])
        return 0
    print(table(("DEVICE", "BOARD", "STATUS", "BUNDLE", "HEALTH", "BUDGET W", "TAGS"),
                [(d.id, d.board, "online" if d.online else "offline", d.active_bundle, d.health,
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
           "tags": list(d.tags), "labels": dict(d.labels), "desired": {
               "version": d.desired_version, "target": d.desired_target, "power_budget_w": d.power_budget_w},
           "last_sample": d.last_sample, "reported": d.reported}
    if args.json:
        emit_json("device", doc)
        return 0
    seen = f"{max(0, int(time.time() - d.last_seen))}s ago" if d.last_seen else "never"
    sample = d.last_sample or {}
    lines = [
        f"device     {d.id} ({'online' if d.online else 'offline'}, seen {seen})",
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
