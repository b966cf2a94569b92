"""`fleetgen budget`: a group's (site's) power budget, shared among its online devices.

    fleetgen budget set GROUP WATTS          (or `none` to stop allocating)
    fleetgen budget device ID [--priority P] [--floor W] [--cap W]
    fleetgen budget show GROUP [--json]      (allocation, measured draw, headroom)

The controller's leader re-shares the budget every few seconds by weighted water-filling
on recent demand (controller.fleet.power) and pushes each device its share in its signed
desired document; shares that moved by less than 5% are not re-pushed.
"""

from __future__ import annotations

import argparse
import math
import sys

from controller.cli._storeargs import add_db_option, emit_json, open_store, table


def _watts(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of watts") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: watts must be a finite number >= 0")
    return value


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("budget", help="fleet power budgets")
    verbs = p.add_subparsers(dest="budget_command", metavar="VERB", required=True)
    s = verbs.add_parser("set", parents=[common], help="set a group's budget in watts")
    s.add_argument("group", metavar="GROUP")
    s.add_argument("watts", type=_watts, metavar="WATTS")
    add_db_option(s, json_output=False)
    s.set_defaults(func=run_set)
    d = verbs.add_parser("device", parents=[common], help="a device's priority, floor and cap")
    d.add_argument("device", metavar="ID")
    d.add_argument("--priority", type=float, default=None, help="weight in the sharing (default 1)")
    d.add_argument("--floor", type=_watts, default=None, metavar="W", help="never less than this")
    d.add_argument("--cap", type=_watts, default=None, metavar="W",
                   help="never more (and never above the board's peak)")
    add_db_option(d, json_output=False)
    d.set_defaults(func=run_device)
    show = verbs.add_parser("show", parents=[common], help="allocation, measured draw, headroom")
    show.add_argument("group", metavar="GROUP")
    add_db_option(show)
    show.set_defaults(func=run_show)


def run_set(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        store.repos.groups.set_budget(args.group, args.watts)
    finally:
        store.close()
    print(f"group {args.group}: budget {'none' if args.watts is None else f'{args.watts:g} W'}", file=sys.stderr)
    return 0


def run_device(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from controller.store.views import PowerSettings

    if args.priority is not None and not (math.isfinite(args.priority) and args.priority > 0):
        raise UsageError(f"--priority: {args.priority:g} must be > 0")
    store = open_store(args)
    try:
        store.repos.devices.detail(args.device)  # refuses an unknown device
        current = store.repos.power.settings(args.device) or PowerSettings(args.device)
        new = PowerSettings(args.device,
                            current.priority if args.priority is None else args.priority,
                            current.floor_w if args.floor is None else args.floor,
                            current.cap_w if args.cap is None else args.cap)
        if new.cap_w is not None and new.cap_w < new.floor_w:
            raise UsageError(f"--cap {new.cap_w:g} W is below the floor {new.floor_w:g} W")
        store.repos.power.set_device(new)
    finally:
        store.close()
    print(f"{args.device}: priority {new.priority:g}, floor {new.floor_w:g} W, cap "
          f"{'board peak' if new.cap_w is None else f'{new.cap_w:g} W'}", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        group = store.repos.groups.get(args.group)
        members = store.repos.power.members(args.group, online_only=False)
    finally:
        store.close()
    allocated = sum(m.allocated_w or 0 for m in members)
    draw = sum(m.demand_w or 0 for m in members)
    headroom = None if group.budget_w is None else group.budget_w - draw
    if args.json:
        emit_json("budget", {"group": group.name, "budget_w": group.budget_w, "allocated_w": allocated,
                             "draw_w": draw, "headroom_w": headroom, "devices": [
                                 {"id": m.device_id, "board": m.board, "allocated_w": m.allocated_w,
                                  "draw_w": m.demand_w, "priority": m.settings.priority,
                                  "floor_w": m.settings.floor_w, "cap_w": m.settings.cap_w} for m in members]})
        return 0
    budget = "none" if group.budget_w is None else f"{group.budget_w:g} W"
    print(f"group {group.name}: budget {budget}, allocated {allocated:.1f} W, measured {draw:.1f} W"
          + ("" if headroom is None else f", headroom {headroom:.1f} W"))
    print(table(("DEVICE", "BOARD", "ALLOCATED W", "DRAW W", "PRIORITY", "FLOOR W", "CAP W"),
                [(m.device_id, m.board, None if m.allocated_w is None else f"{m.allocated_w:.2f}",
                  None if m.demand_w is None else f"{m.demand_w:.2f}", f"{m.settings.priority:g}",
                  f"{m.settings.floor_w:g}", m.settings.cap_w) for m in members]))
    return 0
