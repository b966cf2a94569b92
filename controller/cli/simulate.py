"""`fleetgen simulate`: a fleet of simulated devices on the real protocol.

    fleetgen simulate --devices N --broker URL [--boards MIX] [--fail-rate F]
                      [--offline-rate F] [--seed S] [--root ROOT.json | --repo DIR]
                      [--bundle NAME-VERSION] [--label K=V]... [--processes P]
                      [--telemetry-interval S] [--samples-per-batch K] [--duration S] [--stats FILE]

Each device connects on its own with a Last Will, reports a board from MIX
(`jetson-orin-nano:2,raspberry-pi-5:1`), sends telemetry with that board's power, checks
every desired document with the agent's director verification against the root's pinned
keys (`--root`, else the repository's first root), and answers with the update events.
`--fail-rate` of them fail the health check of a new bundle and roll back; `--offline-rate`
drop off the network when told to update. Runs until `--duration` or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from controller.simulate.boards import DEFAULT_MIX

    p = sub.add_parser("simulate", parents=[common], help="simulate a fleet on the real protocol")
    p.add_argument("--devices", type=int, required=True, metavar="N")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    p.add_argument("--boards", default=DEFAULT_MIX, metavar="MIX", help=f"board mix (default {DEFAULT_MIX})")
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="F", help="share failing health checks (0-1)")
    p.add_argument("--offline-rate", type=float, default=0.0, metavar="F",
                   help="share going offline when told to update (0-1)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--root", metavar="FILE", help="trusted root metadata (pins the director keys)")
    trust.add_argument("--repo", metavar="DIR", help="image repository: use its metadata/1.root.json")
    p.add_argument("--bundle", metavar="NAME-VERSION", help="what the devices run at start")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a reported label")
    p.add_argument("--prefix", default="sim", help="device id prefix (default sim)")
    p.add_argument("--processes", type=int, default=2, metavar="P", help="worker processes (default 2)")
    p.add_argument("--telemetry-interval", type=float, default=2.0, metavar="S")
    p.add_argument("--samples-per-batch", type=int, default=2, metavar="K")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--stats", metavar="FILE", help="write what was sent as JSON here at the end")
    p.set_defaults(func=run)


def _root(args: argparse.Namespace) -> Path:
    from agent.errors import UsageError

    if args.root:
        return Path(args.root)
    repo = args.repo
    if repo is None:
        from controller.cli.serve import load

        repo = load(args).repository
    if repo is None:
        raise UsageError("simulate: give --root ROOT.json or --repo DIR (the devices' pinned root)")
    return Path(repo) / "metadata" / "1.root.json"


def run(args: argparse.Namespace) -> int:
    from agent.errors import ProtocolError, UsageError
    from agent.mqtt.url import BrokerUrl
    from agent.protocol.topics import validate_device_id
    from controller.simulate.fleet import FleetSpec, run_fleet

    broker = BrokerUrl.parse(args.broker, "--broker")
    if broker.tls:
        raise UsageError("--broker: the simulator speaks plain MQTT (mqtt://)")
    try:
        validate_device_id(f"{args.prefix}-0")
    except ProtocolError as e:
        raise UsageError(f"--prefix: {e}") from None
    labels = []
    for label in args.label:
        key, eq, value = label.partition("=")
        if not eq or not key:
            raise UsageError(f"--label {label!r}: expected KEY=VALUE")
        labels.append((key, value))
    if args.telemetry_interval <= 0 or not 1 <= args.samples_per_batch <= 1000:
        raise UsageError("--telemetry-interval must be > 0 and --samples-per-batch in 1-1000")
    if args.processes < 1:
        raise UsageError("--processes must be >= 1")
    spec = FleetSpec(broker=str(broker), devices=args.devices, root=_root(args), boards=args.boards,
                     fail_rate=args.fail_rate, offline_rate=args.offline_rate, seed=args.seed,
                     processes=args.processes, prefix=args.prefix, bundle=args.bundle, labels=tuple(labels),
                     telemetry_interval_s=args.telemetry_interval, samples_per_batch=args.samples_per_batch,
                     duration_s=args.duration)

    def _term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    stats = run_fleet(spec, Path(args.stats) if args.stats else None)
    print(json.dumps(stats), file=sys.stderr)
    return 0
