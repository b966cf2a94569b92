"""`fleetgen-agent provision`: pin the trust anchor (the image repository's root metadata,
which also carries the director key) in the device's state directory.

Run once at installation, from a file that came with the device image or over a channel
you trust; every later metadata and director document is verified against it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("provision", parents=[common], help="pin the root metadata this device trusts")
    p.add_argument("--root", metavar="FILE", required=True,
                   help="root metadata of the image repository (e.g. repo/metadata/1.root.json)")
    p.add_argument("--force", action="store_true", help="replace an already pinned root (re-provisioning)")
    p.set_defaults(func=run)


def pin_root(state_dir: Path, root: bytes, origin: str, *, force: bool) -> int:
    """Pin `root` in `state_dir` (also what `fleetgen-agent install` does with the root it
    receives at enrollment); UsageError if it is not a valid root or one is pinned already."""
    from agent.errors import UsageError
    from agent.trust.errors import TrustError
    from agent.trust.layout import TrustPaths, provision

    paths = TrustPaths(state_dir)
    if paths.provisioned and not force:
        raise UsageError(f"{paths.state_dir} is already provisioned (use --force to replace its root)")
    try:
        return provision(paths, root, origin=origin)
    except TrustError as e:  # not a valid, self-signed root
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from agent.config import local_settings
    from agent.errors import UsageError

    state_dir = local_settings(args.config, args.state_dir).state_dir
    try:
        root = Path(args.root).read_bytes()
    except OSError as e:
        raise UsageError(f"--root {args.root}: cannot read ({e.strerror})") from None
    version = pin_root(state_dir, root, args.root, force=args.force)
    print(f"{state_dir}: trusts root metadata v{version} from {args.root}", file=sys.stderr)
    return 0
