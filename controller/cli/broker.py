"""`fleetgen broker config --out DIR`: a production Mosquitto configuration (docs/broker.md).

Writes DIR/fleetgen.conf (listener), DIR/fleetgen.acl, DIR/fleetgen-crl.{path,service}
and DIR/certs/ (the device CA, the broker's TLS identity and the CRL from the controller's
PKI directory), plus DIR/INSTALL with the commands that put them in place.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path, PurePosixPath

from controller.cli.ca import add_pki_option, pki_dir


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("broker", help="broker configuration")
    verbs = p.add_subparsers(dest="broker_command", metavar="VERB", required=True)
    conf = verbs.add_parser("config", parents=[common], help="write a production Mosquitto configuration")
    conf.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    conf.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    conf.add_argument("--bind", metavar="ADDR", help="listen on this address only (default: all)")
    conf.add_argument("--certs", default="/etc/mosquitto/fleetgen", metavar="DIR",
                      help="where the broker will read certificates and the ACL (default /etc/mosquitto/fleetgen)")
    add_pki_option(conf)
    conf.set_defaults(func=run_config, log_level="WARNING")  # one-shot: its output is the answer


def run_config(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from agent.fsutil import atomic_write
    from controller.broker_config import BrokerLayout, render
    from controller.pki import CertificateAuthority

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a TCP port")
    pki = pki_dir(args)
    ca = CertificateAuthority.open(pki)
    missing = [n for n in ("server.pem", "server.key") if not (pki / n).is_file()]
    if missing:
        raise UsageError(f"{pki}: no {', '.join(missing)} (run `fleetgen ca init`)")
    if not ca.crl_path.is_file():
        ca.write_crl([])
    layout = BrokerLayout(certs=PurePosixPath(args.certs), port=args.port, bind=args.bind,
                          controller_crl=PurePosixPath(str(ca.crl_path.resolve())))
    out = Path(args.out)
    (out / "certs").mkdir(parents=True, exist_ok=True)
    for name, text in render(layout).items():
        atomic_write(out / name, text.encode(), mode=0o644)
    for name, mode in (("ca.pem", 0o644), ("server.pem", 0o644), ("server.key", 0o600), ("crl.pem", 0o644)):
        shutil.copyfile(pki / name, out / "certs" / name)
        (out / "certs" / name).chmod(mode)
    install = "\n".join([
        f"install -d -m 0750 -g mosquitto {layout.certs}",
        f"install -m 0644 {out}/certs/ca.pem {out}/certs/server.pem {out}/certs/crl.pem {out}/fleetgen.acl "
        f"{layout.certs}/",
        f"install -m 0640 -g mosquitto {out}/certs/server.key {layout.certs}/",
        f"install -m 0644 {out}/fleetgen.conf /etc/mosquitto/conf.d/",
        f"install -m 0644 {out}/fleetgen-crl.path {out}/fleetgen-crl.service /etc/systemd/system/",
        "systemctl daemon-reload && systemctl enable --now fleetgen-crl.path && systemctl restart mosquitto",
        "",
    ])
    atomic_write(out / "INSTALL", install.encode(), mode=0o644)
    print(f"Mosquitto configuration in {out}; to install it:\n{install}", file=sys.stderr)
    return 0
