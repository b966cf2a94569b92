"""`fleetgen bundle`: build, inspect, publish and export model bundles.

    fleetgen bundle build MODEL_DIR [-o NAME-VERSION.fgb] [--name N] [--version V]
    fleetgen bundle inspect FILE [--json]
    fleetgen bundle publish FILE --repo DIR [--passphrase-file F] [--offline-keys DIR]
    fleetgen bundle export --repo DIR --to DIR [--bundles]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from agent.errors import FleetgenError, UsageError
from controller.cli._trustargs import add_repo_options, existing_file, open_repo

if TYPE_CHECKING:
    from agent.manifest import SelfTest

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bundle", parents=[common], help="model bundles: build, inspect, publish, export")
    p.set_defaults(log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise
    verbs = p.add_subparsers(dest="bundle_command", metavar="VERB", required=True)

    build = verbs.add_parser("build", help="pack a model folder into NAME-VERSION.fgb")
    build.add_argument("model_dir", metavar="MODEL_DIR")
    build.add_argument("-o", "--output", metavar="FILE", help="bundle file (default NAME-VERSION.fgb)")
    build.add_argument("--name", help="model name (default: the manifest's)")
    build.add_argument("--version", help="model version (default: the manifest's)")
    build.add_argument("--no-probe", action="store_true",
                       help="do not measure the probe perplexity (the device then checks only "
                            "that the model loads and generates)")
    build.set_defaults(func=run_build)

    inspect = verbs.add_parser("inspect", help="verify a bundle and print its manifest")
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=run_inspect)

    publish = verbs.add_parser("publish", help="add a bundle to the image repository as a signed target")
    publish.add_argument("file", metavar="FILE")
    add_repo_options(publish)
    publish.set_defaults(func=run_publish)

    export = verbs.add_parser("export", help="copy the metadata an air-gapped device needs")
    add_repo_options(export, keys=False)
    export.add_argument("--to", required=True, metavar="DIR", help="destination (e.g. a USB stick)")
    export.add_argument("--bundles", action="store_true", help="also copy the published bundles")
    export.set_defaults(func=run_export)


def run_build(args: argparse.Namespace) -> int:
    from agent.manifest import load_manifest
    from agent.update.bundle import build_bundle, default_bundle_name

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: not a directory")
    out = Path(args.output) if args.output else None
    if out is None:
        manifest = load_manifest(model_dir)
        changes = {k: v for k, v in (("name", args.name), ("version", args.version)) if v}
        out = Path(default_bundle_name(msgspec.structs.replace(manifest, **changes)))
    _check_output(out, given=args.output)
    self_test = None if args.no_probe else _probe_self_test(model_dir)
    verified = build_bundle(model_dir, out, name=args.name, version=args.version, self_test=self_test)
    print(f"{out}  {verified.length} bytes  sha256 {verified.sha256}")
    if self_test is not None and self_test.probe_perplexity is not None:
        print(f"probe perplexity {self_test.probe_perplexity:.3f} (reference CPU engine), "
              f"device tolerance {self_test.perplexity_tolerance:.0%}")
    return 0


def _probe_self_test(model_dir: Path) -> SelfTest | None:
    """The health gate's reference figure (agent/update/health.py): the probe's perplexity
    on the reference CPU engine, recorded in the bundle's self-test; a model over the
    manifest's `max_perplexity` is refused here, before it is ever published."""
    from agent.manifest import load_manifest
    from agent.update.health import DEFAULT_PROBE, measure_reference

    manifest = load_manifest(model_dir)
    if manifest.task != "text-generation":
        return None
    try:
        ppl = measure_reference(model_dir)
    except FleetgenError as e:
        # Not fatal here: a model that does not load is refused by the device's health check
        # (and a folder that does not match its manifest by the build itself, just below).
        log.warning("%s: probe perplexity not recorded, the model does not load on the reference "
                    "CPU engine (%s)", model_dir, e)
        return None
    if ppl is None:
        return None
    test = manifest.self_test
    if test.max_perplexity is not None and ppl > test.max_perplexity:
        raise FleetgenError(f"{model_dir}: probe perplexity {ppl:.3f} is above the manifest's "
                            f"max_perplexity {test.max_perplexity:g}; refusing to build")
    return msgspec.structs.replace(test, probe=test.probe or DEFAULT_PROBE, probe_perplexity=round(ppl, 6))


def _check_output(out: Path, given: str | None) -> None:
    """Refuse an output path that cannot be the bundle file, saying why (before packing)."""
    if out.is_dir() or not out.name or out.name in (".", ".."):
        raise UsageError(f"-o {given or out}: is a directory; give the bundle file, e.g. "
                         f"{Path(given or '.') / 'NAME-VERSION.fgb'}")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"-o {given or out}: {parent} is not a directory")
    if not parent.is_dir():
        raise UsageError(f"-o {given or out}: directory {parent} does not exist")


def run_inspect(args: argparse.Namespace) -> int:
    from agent.update.bundle import verify_bundle_file

    path = existing_file(args.file, "bundle")
    verified = verify_bundle_file(path)
    m = verified.manifest
    if args.json:
        doc = {
            "schema": 1,
            "file": str(path),
            "length": verified.length,
            "sha256": verified.sha256,
            "manifest": msgspec.to_builtins(m),
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{path}: {m.name} {m.version} ({m.task}, {m.engine}, {m.quantization})")
    print(f"  {verified.length} bytes, sha256 {verified.sha256}; every member matches the manifest")
    accelerators = ", ".join(m.accelerators) or "-"
    print(f"  boards: {', '.join(m.boards)}  accelerators: {accelerators}  min RAM: {m.min_ram_mb} MB")
    for f in m.files:
        print(f"  {f.length:>12}  {f.sha256[:16]}  {f.path}")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    published = repo.publish(existing_file(args.file, "bundle"))
    print(
        f"published {published.path} ({published.name} {published.version}, sha256 {published.sha256[:16]}) "
        f"in targets v{published.targets_version}"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    written = repo.export(Path(args.to), bundles=args.bundles)
    print(f"exported {len(written)} files to {args.to}")
    return 0
