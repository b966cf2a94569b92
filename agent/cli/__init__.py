"""`fleetgen-agent`: the device-side command line.

Each subcommand lives in its own module exposing `register(subparsers)`; the module
sets `func(args) -> int` as the parser default. Modules import heavy libraries inside
their `func`, never at module level, so `fleetgen-agent --help` stays instant.

Exit codes, one meaning each in every command of both CLIs (docs/trust.md, docs/runtime.md):
0 ok; 1 refused or failed: a bundle or metadata failed verification (a tampered bundle exits 1
from `bundle inspect`, `generate --bundle` and `install-bundle` alike), a broker or database
failed, an extra is missing; 2 unusable input: arguments, config, a file that is not there,
a model folder that does not load or does not match its manifest.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from agent import __version__
from agent.errors import FleetgenError

# Subcommand modules under agent.cli, in the order `--help` lists them.
COMMANDS = ("run", "provision", "generate", "hw", "install_bundle")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Import name -> the extra of pyproject.toml that installs it. A partial install (a device
# without the controller extra) that reaches one of these gets one line naming the extra.
EXTRAS = {
    "sqlalchemy": "controller",
    "psycopg": "controller",
    "amqtt": "controller",
    "onnx": "release",
    "onnx_ir": "release",
    "tflite_runtime": "tflite",
    "ai_edge_litert": "tflite",
}


class MissingExtraError(FleetgenError):
    """A command needs an optional part of fleetgen (an extra) that is not installed."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the {extra!r} extra, which is not installed (no module {module!r}): "
            f"pip install 'fleetgen[{extra}]' from the wheel or clone you installed (README: Install)"
        )
        self.extra = extra


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Refuse, before any work is done, a command whose extra is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(what, extra, module)


def common_parser(config_default: str) -> argparse.ArgumentParser:
    """Options every subcommand takes (so several agents can run side by side).

    A fresh parser per subcommand: argparse shares the parent's action objects with every
    child, so one subcommand's `set_defaults(log_level=...)` would otherwise change the
    default of all of them (it did: `run` ran at generate's WARNING)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help=f"config file (default {config_default})")
    common.add_argument("--state-dir", metavar="DIR", help="state directory (over the config)")
    common.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO for the daemons, run and serve; WARNING for one-shot "
             "commands such as generate, whose output is the answer)",
    )
    return common


def dispatcher(prog: str, description: str, package: str, commands: Sequence[str],
               config_default: str) -> argparse.ArgumentParser:
    """The top-level parser with one subcommand per module `package.NAME` in `commands`."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        importlib.import_module(f"{package}.{name}").register(sub, common_parser(config_default))
    return parser


def build_parser() -> argparse.ArgumentParser:
    return dispatcher("fleetgen-agent", "fleetgen on-device agent", "agent.cli", COMMANDS,
                      "/etc/fleetgen/agent.toml")


def configure_logging(level: str) -> None:
    # journald adds its own timestamps; keep lines short and greppable.
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and turn FleetgenError into one line on stderr and its exit code."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", "INFO"))
    try:
        return int(args.func(args) or 0)
    except FleetgenError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        missing = MissingExtraError(str(args.command), extra, e.name or "")
        print(f"{parser.prog}: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
