"""Options and helpers shared by `fleetgen keys`, `bundle` and `director`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from controller.tuf.repository import Repository

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """'90', '30m', '12h', '1d' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 3600, 30m, 12h or 1d")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def add_repo_options(p: argparse.ArgumentParser, *, keys: bool = True) -> None:
    p.add_argument("--repo", required=True, metavar="DIR", help="image repository directory")
    if keys:
        p.add_argument(
            "--offline-keys", metavar="DIR",
            help="where the root/targets key files are (default REPO/keys/offline)",
        )
        p.add_argument(
            "--passphrase-file", metavar="F",
            help="a file you create whose first line is the offline keys' passphrase "
                 "(else $FLEETGEN_PASSPHRASE, else a prompt)",
        )


def open_repo(args: argparse.Namespace) -> Repository:
    from controller.tuf import keystore
    from controller.tuf.repository import Repository

    passphrase = keystore.read_passphrase_file(getattr(args, "passphrase_file", None))
    offline = getattr(args, "offline_keys", None)
    return Repository(
        Path(args.repo),
        offline_keys=Path(offline) if offline else None,
        passphrase=keystore.passphrase_source(passphrase),
    )


def existing_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    return p
