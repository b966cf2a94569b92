"""`fleetgen`: the controller-side command line (fleet, keys, bundles, models, demo).

Same conventions as `fleetgen-agent` (see agent.cli): one module per verb with
`register(subparsers, common)`, heavy imports inside the handlers, exit 0/1/2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import Parser, run_cli

COMMANDS = ("serve", "fleet", "keys", "bundle", "director", "model", "demo")


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="controller config (default /etc/fleetgen/controller.toml)")
    common.add_argument("--state-dir", metavar="DIR", help="controller state directory (over the config)")
    common.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fleetgen", description="fleetgen fleet controller")
    parser.add_argument("--version", action="version", version=f"fleetgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    for name in COMMANDS:
        importlib.import_module(f"controller.cli.{name}").register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
