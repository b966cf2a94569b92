"""`fleetgen rollout`: a signed bundle to a group, in waves, gated on the devices' health.

    fleetgen rollout start BUNDLE --to GROUP [--waves 1,10%,50%,100%] [--max-failures 5%]
                           [--wave-timeout 10m] [--repo DIR] [--json]
    fleetgen rollout status ID [--json]
    fleetgen rollout pause|resume|abort ID
    fleetgen rollout ls [--json]

`start` checks everything it can and records the rollout; the controller (`fleetgen serve`,
its leader when there are replicas) carries it out: each wave's devices get a signed
director document naming BUNDLE, the wave passes when they commit it, and the rollout
halts (and directs that wave back to the bundle each device ran before) when more than
`--max-failures` of a wave fail, roll back, refuse, or say nothing within `--wave-timeout`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli._storeargs import add_db_option, emit_json, open_store, table
from controller.cli._trustargs import duration

if TYPE_CHECKING:
    from controller.store.views import RolloutView


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from controller.fleet.rollout import DEFAULT_MAX_FAILURES, DEFAULT_WAVES

    p = sub.add_parser("rollout", help="staged rollouts of a bundle to a group")
    verbs = p.add_subparsers(dest="rollout_command", metavar="VERB", required=True)
    s = verbs.add_parser("start", parents=[common], help="start rolling BUNDLE out to a group")
    s.add_argument("bundle", metavar="BUNDLE", help="a published target, e.g. tiny-2.0.0.fgb")
    s.add_argument("--to", required=True, metavar="GROUP", dest="group")
    s.add_argument("--waves", default=DEFAULT_WAVES, help=f"cumulative wave sizes (default {DEFAULT_WAVES})")
    s.add_argument("--max-failures", default=DEFAULT_MAX_FAILURES, metavar="PCT",
                   help=f"failure share of a wave that halts the rollout (default {DEFAULT_MAX_FAILURES})")
    s.add_argument("--wave-timeout", default="10m", metavar="DUR",
                   help="a device silent this long counts as failed (default 10m)")
    s.add_argument("--repo", metavar="DIR", help="image repository (over the config)")
    add_db_option(s)
    s.set_defaults(func=run_start)
    for verb, text in (("status", "one rollout, wave by wave"), ("pause", "hold before the next step"),
                       ("resume", "continue a paused rollout"), ("abort", "stop and roll everyone back")):
        v = verbs.add_parser(verb, parents=[common], help=text)
        v.add_argument("id", type=int, metavar="ID")
        add_db_option(v, json_output=verb == "status")
        v.set_defaults(func=run_status if verb == "status" else run_request, action=verb)
    ls = verbs.add_parser("ls", parents=[common], help="every rollout")
    add_db_option(ls)
    ls.set_defaults(func=run_ls)


def run_start(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from controller.cli.serve import load
    from controller.fleet.rollout import RolloutPolicy, parse_ratio, parse_waves
    from controller.services.rollouts import start_rollout

    try:
        timeout = float(duration(args.wave_timeout))
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--wave-timeout: {e}") from None
    policy = RolloutPolicy(parse_waves(args.waves), parse_ratio(args.max_failures), timeout)
    config = load(args)
    repo_dir = args.repo or config.repository
    if repo_dir is None:
        raise UsageError("rollout start: no image repository (give --repo or set `repository` in the config)")
    store = open_store(args)
    try:
        view = start_rollout(store, Path(repo_dir), args.bundle, args.group, policy, args.waves)
    finally:
        store.close()
    if args.json:
        emit_json("rollout", _doc(view))
    else:
        sizes = ", ".join(str(len(w)) for w in view.plan)
        print(f"rollout {view.id} started: {args.bundle} to {args.group}, {len(view.devices)} devices "
              f"in {len(view.plan)} waves ({sizes})")
    return 0


def _doc(v: RolloutView) -> dict[str, Any]:
    return {
        "id": v.id, "bundle": v.bundle, "group": v.group, "status": v.status, "waves": v.waves_spec,
        "max_failures": v.max_failure_ratio, "wave_timeout_s": v.wave_timeout_s, "current_wave": v.current_wave,
        "wave_started": v.wave_started, "created": v.created, "updated": v.updated, "reason": v.reason,
        "counts": v.counts(),
        "plan": [[{"device": d, "result": v.devices[d].result, "detail": v.devices[d].detail,
                   "director_version": v.devices[d].director_version,
                   "previous_target": v.devices[d].previous_target} for d in wave if d in v.devices]
                 for wave in v.plan],
    }


def run_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        view = store.repos.rollouts.get(args.id)
    finally:
        store.close()
    if args.json:
        emit_json("rollout", _doc(view))
        return 0
    print(f"rollout {view.id}: {view.bundle} to {view.group}: {view.status}"
          + (f" ({view.reason})" if view.reason else ""))
    rows = []
    for i, wave in enumerate(view.plan):
        counts: dict[str, int] = {}
        for d in wave:
            r = view.devices[d].result if d in view.devices else "?"
            counts[r] = counts.get(r, 0) + 1
        mark = "*" if i == view.current_wave and view.status in ("running", "paused") else ""
        rows.append((f"{i + 1}{mark}", len(wave), *(counts.get(k, 0) for k in
                     ("waiting", "pending", "committed", "failed", "timed_out", "rolled_back", "revoked"))))
    print(table(("WAVE", "DEVICES", "WAITING", "PENDING", "COMMITTED", "FAILED", "TIMED OUT", "ROLLED BACK",
                 "REVOKED"), rows))
    return 0


def run_request(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        view = store.repos.rollouts.request(args.id, args.action)
    finally:
        store.close()
    print(f"rollout {view.id}: {view.status}", file=sys.stderr)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    store = open_store(args)
    try:
        views = [store.repos.rollouts.get(v.id) for v in store.repos.rollouts.list()]
    finally:
        store.close()
    if args.json:
        emit_json("rollouts", [{k: v for k, v in _doc(x).items() if k != "plan"} for x in views])
        return 0
    print(table(("ID", "BUNDLE", "GROUP", "STATUS", "WAVE", "DEVICES", "COMMITTED", "FAILED"),
                [(v.id, v.bundle, v.group, v.status, f"{min(v.current_wave + 1, len(v.plan))}/{len(v.plan)}",
                  len(v.devices), v.counts().get("committed", 0),
                  v.counts().get("failed", 0) + v.counts().get("timed_out", 0)) for v in views]))
    return 0
