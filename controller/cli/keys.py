"""`fleetgen keys` (being built; see its issue)."""

from __future__ import annotations

import argparse

from agent.errors import FleetgenError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", parents=[common], help="(not yet available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise FleetgenError("keys is not available yet")
