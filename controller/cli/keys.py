"""`fleetgen keys`: create the image repository and manage its keys (through root).

    fleetgen keys init --repo DIR [--threshold N] [--keys M] [--passphrase-file F]
    fleetgen keys rotate ROLE --repo DIR      (root, targets, snapshot, timestamp, director)
    fleetgen keys revoke KEYID --repo DIR
    fleetgen keys list --repo DIR [--json]
    fleetgen keys resign --repo DIR [--force] (re-sign snapshot/timestamp when due)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controller.cli._trustargs import add_repo_options, duration, open_repo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", parents=[common], help="image repository keys (TUF)")
    p.set_defaults(log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise
    verbs = p.add_subparsers(dest="keys_command", metavar="VERB", required=True)

    init = verbs.add_parser("init", help="create the repository, its metadata and keys")
    add_repo_options(init)
    init.add_argument("--threshold", type=int, default=1, help="signatures needed for root and targets")
    init.add_argument("--keys", type=int, help="keys per offline role (default: the threshold)")
    init.add_argument("--timestamp-expiry", type=duration, default=86400, metavar="DUR",
                      help="timestamp lifetime (default 1d; re-signed on a schedule)")
    init.add_argument("--snapshot-expiry", type=duration, default=7 * 86400, metavar="DUR")
    init.add_argument("--targets-expiry", type=duration, default=90 * 86400, metavar="DUR")
    init.add_argument("--root-expiry", type=duration, default=365 * 86400, metavar="DUR")
    init.set_defaults(func=run_init)

    rotate = verbs.add_parser("rotate", help="replace a role's keys (new root version)")
    rotate.add_argument("role", choices=["root", "targets", "snapshot", "timestamp", "director"])
    add_repo_options(rotate)
    rotate.set_defaults(func=run_rotate)

    revoke = verbs.add_parser("revoke", help="remove one key (new root version)")
    revoke.add_argument("keyid", help="key id (at least 8 leading hex digits)")
    add_repo_options(revoke)
    revoke.set_defaults(func=run_revoke)

    ls = verbs.add_parser("list", help="keys of every role")
    add_repo_options(ls, keys=False)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    resign = verbs.add_parser("resign", help="re-sign snapshot/timestamp when half their life is gone")
    add_repo_options(resign, keys=False)
    resign.add_argument("--force", action="store_true", help="re-sign now")
    resign.set_defaults(func=run_resign)


def run_init(args: argparse.Namespace) -> int:
    from controller.tuf import keystore
    from controller.tuf.repository import RepoConfig, Repository

    passphrase = keystore.read_passphrase_file(args.passphrase_file)
    config = RepoConfig(
        root_expiry_s=args.root_expiry,
        targets_expiry_s=args.targets_expiry,
        snapshot_expiry_s=args.snapshot_expiry,
        timestamp_expiry_s=args.timestamp_expiry,
    )
    repo = Repository.create(
        Path(args.repo),
        threshold=args.threshold,
        keys=args.keys,
        passphrase=passphrase,
        config=config,
        offline_keys=Path(args.offline_keys) if args.offline_keys else None,
    )
    print(f"repository {repo.path} created")
    print(f"offline keys (root, targets): {repo.keys.offline}  <- move these off this machine")
    print(f"online keys (snapshot, timestamp, director): {repo.keys.online}")
    print(f"provision devices with {repo.metadata_dir / '1.root.json'}")
    if not passphrase:
        print("warning: offline keys are NOT encrypted (give --passphrase-file)", file=sys.stderr)
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from controller.tuf import keystore

    repo = open_repo(args)
    ids = repo.rotate(args.role, keystore.read_passphrase_file(args.passphrase_file))
    print(f"{args.role}: new key(s) {', '.join(i[:12] for i in ids)}; root is now v{repo.root().version}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    role = repo.revoke(args.keyid)
    print(f"revoked {role} key {args.keyid}; root is now v{repo.root().version}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    root = repo.root()
    roles: dict[str, dict[str, object]] = {}
    for role in ("root", "targets", "snapshot", "timestamp", "director"):
        threshold = 1 if role == "director" else root.roles[role].threshold
        roles[role] = {"threshold": threshold, "keyids": [k.keyid for k in repo.role_keys(role, root)]}
    if args.json:
        print(json.dumps({"schema": 1, "root_version": root.version, "roles": roles}, indent=2))
        return 0
    print(f"root v{root.version}, expires {root.expires:%Y-%m-%d}")
    for role, info in roles.items():
        keyids = " ".join(str(k)[:12] for k in info["keyids"])  # type: ignore[attr-defined]
        print(f"{role:<10} threshold {info['threshold']}  {keyids}")
    return 0


def run_resign(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    done = repo.resign_online(force=args.force)
    print(f"re-signed: {', '.join(done)}" if done else "nothing due")
    return 0
