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


def run(args: argparse.Namespace) -> int:
    from agent.config import local_settings
    from agent.errors import UsageError
    from agent.trust.errors import TrustError
    from agent.trust.layout import TrustPaths, provision

    paths = TrustPaths(local_settings(args.config, args.state_dir).state_dir)
    try:
        root = Path(args.root).read_bytes()
    except OSError as e:
        raise UsageError(f"--root {args.root}: cannot read ({e.strerror})") from None
    if paths.provisioned and not args.force:
        raise UsageError(f"{paths.state_dir} is already provisioned (use --force to replace its root)")
    try:
        version = provision(paths, root, origin=args.root)
    except TrustError as e:  # the file the user gave is not a valid, self-signed root
        raise UsageError(str(e)) from None
    print(f"{paths.state_dir}: trusts root metadata v{version} from {args.root}", file=sys.stderr)
    return 0
