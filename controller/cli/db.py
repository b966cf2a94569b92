"""`fleetgen db`: the controller's database schema and retention.

    fleetgen db upgrade [--db URL]     (apply migrations; `serve` does it too at start)
    fleetgen db current [--db URL]     (the schema revision in force, and the newest)
    fleetgen db prune [--raw-days N] [--keep-days N]   (downsample and expire telemetry)
"""

from __future__ import annotations

import argparse
import sys
import time

from controller.cli._storeargs import add_db_option


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("db", help="database schema (migrations) and telemetry retention")
    verbs = p.add_subparsers(dest="db_command", metavar="VERB", required=True)
    u = verbs.add_parser("upgrade", parents=[common], help="migrate the schema to the newest revision")
    add_db_option(u, json_output=False)
    u.set_defaults(func=run_upgrade, log_level="INFO")  # the migrations it runs
    c = verbs.add_parser("current", parents=[common], help="show the schema revision")
    add_db_option(c, json_output=False)
    c.set_defaults(func=run_current)
    pr = verbs.add_parser("prune", parents=[common], help="downsample old telemetry, expire older buckets")
    pr.add_argument("--raw-days", type=float, help="keep raw samples this long (default: config, 7)")
    pr.add_argument("--keep-days", type=float, help="keep downsampled buckets this long (default: config, 90)")
    add_db_option(pr, json_output=False)
    pr.set_defaults(func=run_prune)


def _engine(args: argparse.Namespace):  # -> (Store without migrating)
    from controller.cli.serve import load
    from controller.store import Store

    return Store(load(args).db_url, create=False)


def run_upgrade(args: argparse.Namespace) -> int:
    from controller.store.migrate import upgrade

    store = _engine(args)
    try:
        revision = upgrade(store.engine)
    finally:
        store.close()
    print(f"database at revision {revision}", file=sys.stderr)
    return 0


def run_current(args: argparse.Namespace) -> int:
    from controller.store.migrate import current, head

    store = _engine(args)
    try:
        revision = current(store.engine)
    finally:
        store.close()
    newest = head()
    state = "up to date" if revision == newest else f"needs `fleetgen db upgrade` to {newest}"
    print(f"{revision or 'empty'} ({state})")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from controller.cli.serve import load
    from controller.store import Store

    config = load(args)
    raw = config.telemetry_raw_days if args.raw_days is None else args.raw_days
    keep = config.telemetry_keep_days if args.keep_days is None else args.keep_days
    store = Store(config.db_url)
    try:
        result = store.repos.retention.prune(time.time(), raw_days=raw, keep_days=keep,
                                             bucket_s=config.telemetry_bucket_s)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        store.close()
    print(f"downsampled {result.downsampled} samples into {result.buckets} buckets; "
          f"expired {result.expired_buckets} buckets", file=sys.stderr)
    return 0
