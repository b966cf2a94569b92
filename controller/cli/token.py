"""`fleetgen token`: API tokens for the controller's REST API.

    fleetgen token create NAME     prints a new token once (only its SHA-256 is stored)
    fleetgen token revoke NAME
    fleetgen token ls [--json]

The API changes state only for a request carrying `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import argparse
import json
import sys

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("token", help="create and revoke REST API tokens")
    verbs = p.add_subparsers(dest="token_command", metavar="VERB", required=True)
    for verb, help_text in (("create", "create a token and print it (once)"), ("revoke", "revoke a token")):
        v = verbs.add_parser(verb, parents=[common], help=help_text)
        v.add_argument("name", metavar="NAME")
        v.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
        v.set_defaults(func=run_create if verb == "create" else run_revoke)
    ls = verbs.add_parser("ls", parents=[common], help="list token names")
    ls.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_ls)


def _tokens(args: argparse.Namespace):  # -> Tokens (imported lazily)
    from agent.cli import require_extra
    from controller.cli.serve import load

    require_extra(f"token {args.token_command}", "controller", "sqlalchemy")
    from controller.store import Store
    from controller.web.tokens import Tokens

    return Tokens(Store(load(args).db_url))


def run_create(args: argparse.Namespace) -> int:
    token = _tokens(args).create(args.name)
    sys.stdout.write(token + "\n")
    print(f"token {args.name!r} created; it is shown only now", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    _tokens(args).revoke(args.name)
    print(f"token {args.name!r} revoked", file=sys.stderr)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    tokens = _tokens(args).list()
    if args.json:
        out = json.dumps({"schema": SCHEMA, "tokens": [{"name": t.name, "created": t.created} for t in tokens]})
    else:
        out = "\n".join(t.name for t in tokens)
    sys.stdout.write(out + "\n" if out else "")
    return 0
