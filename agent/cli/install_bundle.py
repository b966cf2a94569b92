"""`fleetgen-agent install-bundle FILE --metadata DIR`: air-gapped install.

Applies every TUF check (signatures, thresholds, expiry, rollback of metadata versions,
length and hashes) against the metadata in DIR (from `fleetgen bundle export`), checks the
board, installs atomically, and exits non-zero naming the failed check. The first install
on a fresh state dir trusts DIR's root metadata only with `--trust-root`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.errors import UsageError

log = logging.getLogger(__name__)

def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "install-bundle", parents=[common], help="install a signed bundle without network (air-gapped)"
    )
    p.add_argument("file", metavar="FILE", help="the bundle (NAME-VERSION.fgb)")
    p.add_argument("--metadata", required=True, metavar="DIR", help="exported repository metadata")
    p.add_argument(
        "--trust-root", action="store_true",
        help="on a fresh state dir, trust the root metadata found in DIR (say so in the log)",
    )
    p.add_argument("--board", help="board id to match the bundle against (default: detected)")
    p.set_defaults(func=run)


def _board(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        from firmware.detect import detect_board

        return detect_board().profile.id
    except Exception as e:  # detection is best effort; the manifest may accept any board
        log.warning("board detection failed (%s); using 'generic'", e)
        return "generic"


def run(args: argparse.Namespace) -> int:
    from agent.config import local_settings
    from agent.trust.errors import TrustError
    from agent.trust.layout import TrustPaths
    from agent.update.install import install_offline

    bundle = Path(args.file)
    metadata = Path(args.metadata)
    if not bundle.is_file():
        raise UsageError(f"{bundle}: no such bundle file")
    if not metadata.is_dir():
        raise UsageError(f"--metadata {metadata}: not a directory")
    settings = local_settings(args.config, args.state_dir)
    state_dir, configured_board = settings.state_dir, settings.forced_profile
    fresh = not TrustPaths(state_dir).provisioned
    try:
        result = install_offline(
            state_dir, bundle, metadata, board=_board(args.board or configured_board), trust_root=args.trust_root
        )
    except TrustError as e:  # already logged where it was refused; main() prints it once
        refusal = type(e)(f"refused ({e.check}): {e}")
        raise refusal from None
    if fresh:
        print(f"trusted the root metadata in {metadata} (--trust-root) for {state_dir}", file=sys.stderr)
    installed = result.installed
    assert installed is not None
    m = installed.bundle.manifest
    state = "installed" if installed.changed else "already current:"
    print(f"{state} {m.name} {m.version} -> {installed.path}")
    return 0
