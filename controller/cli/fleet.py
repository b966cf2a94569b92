"""`fleetgen fleet` (being built; see its issue)."""

from __future__ import annotations

import argparse

from agent.errors import FleetgenError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fleet", parents=[common], help="(not yet available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise FleetgenError("fleet is not available yet")
