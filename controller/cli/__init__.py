"""`fleetgen`: the controller-side command line (fleet, keys, bundles, models, demo).

Same conventions as `fleetgen-agent` (see agent.cli): one module per verb with
`register(subparsers, common)`, heavy imports inside the handlers, exit 0/1/2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.cli import dispatcher, run_cli

COMMANDS = ("serve", "fleet", "device", "group", "rollout", "budget", "simulate", "db", "ca", "broker",
            "keys", "bundle", "director", "model", "demo", "token")


def build_parser() -> argparse.ArgumentParser:
    return dispatcher("fleetgen", "fleetgen fleet controller", "controller.cli", COMMANDS,
                      "/etc/fleetgen/controller.toml")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
