"""`fleetgen group`: named sets of devices, by id, board, tag or reported label.

    fleetgen group create NAME
    fleetgen group add NAME [--device ID]... [--board B]... [--tag T]... [--label K=V]...
    fleetgen group rm NAME [selectors]      (no selector: delete the group)
    fleetgen group ls [NAME] [--json]       (with NAME: its members)
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from controller.cli._storeargs import add_db_option, emit_json, open_store, table

if TYPE_CHECKING:
    from controller.store.views import GroupRule


def _selectors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a device by id")
    p.add_argument("--board", action="append", default=[], metavar="BOARD", help="every device of a board")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="every device with a tag")
    p.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="every device whose reported labels have K=V")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("group", help="groups of devices (rollout and power targets)")
    verbs = p.add_subparsers(dest="group_command", metavar="VERB", required=True)
    c = verbs.add_parser("create", parents=[common], help="create an empty group")
    c.add_argument("name", metavar="NAME")
    add_db_option(c, json_output=False)
    c.set_defaults(func=run_create)
    a = verbs.add_parser("add", parents=[common], help="add selectors (devices, boards, tags, labels)")
    a.add_argument("name", metavar="NAME")
    _selectors(a)
    add_db_option(a, json_output=False)
    a.set_defaults(func=run_add)
    r = verbs.add_parser("rm", parents=[common], help="remove selectors, or the group when none given")
    r.add_argument("name", metavar="NAME")
    _selectors(r)
    add_db_option(r, json_output=False)
    r.set_defaults(func=run_rm)
    ls = verbs.add_parser("ls", parents=[common], help="list groups, or one group's members")
    ls.add_argument("name", nargs="?", metavar="NAME")
    add_db_option(ls)
    ls.set_defaults(func=run_ls)


def rules_from(args: argparse.Namespace) -> list[GroupRule]:
    from agent.errors import ProtocolError, UsageError
    from agent.protocol.topics import validate_device_id
    from controller.store.devices import check_tag
    from controller.store.views import GroupRule

    rules: list[GroupRule] = []
    for d in args.device:
        try:
            rules.append(GroupRule("device", validate_device_id(d)))
        except ProtocolError as e:
            raise UsageError(f"--device: {e}") from None
    rules += [GroupRule("board", b) for b in args.board]
    rules += [GroupRule("tag", check_tag(t)) for t in args.tag]
    for label in args.label:
        if "=" not in label or label.startswith("="):
            raise UsageError(f"--label {label!r}: expected KEY=VALUE")
        rules.append(GroupRule("label", label))
    return rules


def run_create(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.repos.groups.create(args.name)
    finally:
        store.close()
    print(f"group {args.name} created", file=sys.stderr)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from agent.errors import UsageError

    rules = rules_from(args)
    if not rules:
        raise UsageError("group add: give at least one of --device, --board, --tag, --label")
    store = open_store(args)
    try:
        store.repos.groups.add(args.name, rules)
        view = store.repos.groups.get(args.name)
        unknown = [r.value for r in rules if r.kind == "device" and not store.repos.devices.exists(r.value)]
    finally:
        store.close()
    for d in unknown:
        print(f"note: device {d} is not registered yet; it joins the group when it is", file=sys.stderr)
    print(f"group {args.name}: {len(view.members)} devices", file=sys.stderr)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from agent.errors import UsageError

    rules = rules_from(args)
    store = open_store(args)
    try:
        if not rules:
            busy = [r for r in store.repos.rollouts.list() if r.group == args.name
                    and r.status in ("running", "paused", "aborting")]
            if busy:
                raise UsageError(f"group {args.name} has an unfinished rollout ({busy[0].id}); abort it first")
            store.repos.groups.delete(args.name)
            print(f"group {args.name} deleted", file=sys.stderr)
            return 0
        removed = store.repos.groups.remove(args.name, rules)
        view = store.repos.groups.get(args.name)
    finally:
        store.close()
    print(f"group {args.name}: {removed} selectors removed, {len(view.members)} devices", file=sys.stderr)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        if args.name:
            view = store.repos.groups.get(args.name)
            if args.json:
                emit_json("group", {"name": view.name, "rules": [str(r) for r in view.rules],
                                    "members": list(view.members), "budget_w": view.budget_w})
            else:
                sys.stdout.write("\n".join(view.members) + ("\n" if view.members else ""))
            return 0
        views = store.repos.groups.list()
    finally:
        store.close()
    if args.json:
        emit_json("groups", [{"name": v.name, "rules": [str(r) for r in v.rules], "devices": len(v.members),
                              "budget_w": v.budget_w} for v in views])
    else:
        print(table(("GROUP", "DEVICES", "BUDGET W", "SELECTORS"),
                    [(v.name, len(v.members), v.budget_w, " ".join(str(r) for r in v.rules)) for v in views]))
    return 0
