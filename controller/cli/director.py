"""`fleetgen director`: sign a device's desired state (the director document).

    fleetgen director set DEVICE --repo DIR --target NAME-VERSION.fgb [--db URL]
                          [--expires 7d] [--power-budget W] [-o FILE] [--broker mqtt://HOST:PORT]

The document names the exact published target (path, length, hashes), carries the next
version for that device and an expiry, and is signed with the director key. With
`--broker` it is published retained on `fleetgen/v1/dev/DEVICE/desired`; with `-o` it is
written to a file; otherwise it is printed. Returning a device to an older bundle is just
`set` with the older target: the version still goes up.

The version comes from the controller's store, the same transactional per-device counter
that rollouts and power budgets take theirs from (controller/store/desired.py), so neither
another `director set` nor any replica can hand out the same number: `--db URL`, else the
controller configuration's database. Without either, and with no controller database at
the default place, the counter lives beside the repository (REPO/director/desired.db).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from controller.cli._trustargs import add_repo_options, duration, open_repo

if TYPE_CHECKING:
    from agent.mqtt.url import BrokerUrl
    from agent.protocol.messages import SignedEnvelope
    from controller.store import Store


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("director", parents=[common], help="sign devices' desired state")
    p.set_defaults(log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise
    verbs = p.add_subparsers(dest="director_command", metavar="VERB", required=True)
    s = verbs.add_parser("set", help="sign (and publish) the desired state of one device")
    s.add_argument("device", metavar="DEVICE")
    add_repo_options(s, keys=False)
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="NAME", help="a published bundle, e.g. tiny-1.0.0.fgb")
    target.add_argument("--no-target", action="store_true", help="config/power only, no bundle")
    s.add_argument("--expires", type=duration, default=7 * 86400, metavar="DUR", help="lifetime (default 7d)")
    s.add_argument("--power-budget", type=float, metavar="W", help="power budget in watts")
    s.add_argument("-o", "--output", metavar="FILE", help="write the signed envelope here")
    s.add_argument("--broker", metavar="URL", help="publish it retained (mqtt://host:port)")
    s.add_argument("--db", metavar="URL", help="the controller's database, whose counter gives the version")
    s.set_defaults(func=run_set)


def run_set(args: argparse.Namespace) -> int:
    from agent.errors import ProtocolError, UsageError
    from agent.protocol.codec import encode
    from agent.protocol.topics import validate_device_id
    from controller.director import Director, write_envelope

    try:
        validate_device_id(args.device)
    except ProtocolError as e:
        raise UsageError(str(e)) from None
    # Every check on the arguments comes before signing: a signature uses up a version.
    broker = _broker(args.broker) if args.broker else None
    director = Director(open_repo(args))
    target = None if args.no_target else args.target
    ref = director.repo.target_ref(target) if target is not None else None
    store = _store(args)
    try:
        if store.repos.desired.revoked([args.device]):
            raise UsageError(f"{args.device} is revoked (`fleetgen device revoke`): the director signs nothing "
                             "for it until it enrolls again")
        view = store.repos.desired.next_version(args.device, target=target, power_budget_w=args.power_budget,
                                                floor=director.legacy_version(args.device))
    finally:
        store.close()
    envelope = director.signed(args.device, view.version, ref, power_budget_w=args.power_budget,
                               expires_in_s=args.expires)
    if args.output:
        write_envelope(Path(args.output), envelope)
    if broker is not None:
        _publish(broker, args.device, envelope)
    if not args.output and not args.broker:
        sys.stdout.write(encode(envelope).decode() + "\n")
    print(f"{args.device}: desired state signed ({args.target or 'no target'})", file=sys.stderr)
    return 0


def _store(args: argparse.Namespace) -> Store:
    """The store whose counter gives the version (see the module's docstring)."""
    from agent.cli import require_extra

    require_extra("director set", "controller", "sqlalchemy")
    from controller.cli.serve import load
    from controller.config import ControllerConfig
    from controller.store import Store

    config = load(args)
    default = ControllerConfig()
    url = config.db_url
    if (config.database_url is None and config.state_dir == default.state_dir
            and not (Path(default.state_dir) / "controller.db").exists()):
        url = f"sqlite:///{Path(args.repo).resolve() / 'director' / 'desired.db'}"
    return Store(url)


def _broker(url: str) -> BrokerUrl:
    from agent.errors import ConfigError, UsageError
    from agent.mqtt.url import BrokerUrl

    try:
        broker = BrokerUrl.parse(url, "--broker")
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if broker.tls:
        raise UsageError("--broker: mqtts needs the controller's TLS settings; use `fleetgen serve`")
    return broker


def _publish(broker: BrokerUrl, device: str, envelope: SignedEnvelope) -> None:
    from agent.mqtt.link import MqttLink
    from agent.mqtt.settings import MqttSettings
    from controller.director import publish_desired

    transport = MqttLink.open(MqttSettings(url=str(broker), protocol="3.1.1"))
    try:
        publish_desired(transport, device, envelope)
        transport.flush(timeout=10)
    finally:
        transport.stop()
