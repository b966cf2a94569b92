"""Options and helpers shared by the commands that work on the controller's store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.store import Store

SCHEMA = 1


def add_db_option(p: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    # One-shot commands: their output is the answer; the store's INFO lines (alembic's
    # migration context at every open) are noise. `db` sets its own level back.
    p.set_defaults(log_level="WARNING")
    if json_output:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def open_store(args: argparse.Namespace) -> Store:
    from controller.cli.serve import load
    from controller.store import Store

    return Store(load(args).db_url)


def emit_json(key: str, value: Any) -> None:
    sys.stdout.write(json.dumps({"schema": SCHEMA, key: value}, indent=2, default=str) + "\n")


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple("-" if c is None or c == "" else str(c) for c in r) for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
