"""`fleetgen ca init`: the device CA, the broker's TLS identity and the controller's own.

    fleetgen ca init [--pki DIR] [--name HOST ...] [--force]

Writes PKI/ca.pem+key (device CA), PKI/server.pem+key (the broker and the enrollment
endpoint, SANs = --name), PKI/controller.pem+key (the controller's client identity) and an
empty PKI/crl.pem. PKI defaults to the controller's state directory (STATE/pki).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ca", help="the device certificate authority")
    verbs = p.add_subparsers(dest="ca_command", metavar="VERB", required=True)
    init = verbs.add_parser("init", parents=[common], help="create the device CA and the controller's identities")
    add_pki_option(init)
    init.add_argument("--name", action="append", metavar="HOST",
                      help="DNS name or IP devices reach the broker and controller by (repeatable; "
                           "default: this host's name, localhost, 127.0.0.1)")
    init.add_argument("--force", action="store_true", help="replace an existing CA (every device must re-enroll)")
    init.set_defaults(func=run_init, log_level="WARNING")  # one-shot: its output is the answer


def add_pki_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pki", metavar="DIR", help="device CA directory (default: enroll.pki_dir, else STATE/pki)")


def pki_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "pki", None):
        return Path(args.pki)
    from controller.cli.serve import load

    return load(args).pki_path


def run_init(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from controller.pki import CertificateAuthority

    directory = pki_dir(args)
    ca = CertificateAuthority(directory)
    if ca.cert_path.exists() and not args.force:
        fingerprint = CertificateAuthority.open(directory).fingerprint()
        raise UsageError(f"{directory} already has a device CA (sha256 {fingerprint[:16]}...); "
                         "--force replaces it and every device must re-enroll")
    names = args.name or [socket.getfqdn(), "localhost", "127.0.0.1"]
    ca = CertificateAuthority.create(directory)
    ca.issue_server(list(dict.fromkeys(names)), directory)
    ca.issue_controller(directory)
    ca.write_crl([])
    print(f"device CA {ca.cert_path} (sha256 {ca.fingerprint()})")
    print(f"broker/enrollment TLS identity {directory / 'server.pem'} for {', '.join(dict.fromkeys(names))}")
    print(f"controller client identity {directory / 'controller.pem'}")
    print(f"CRL {ca.crl_path}")
    print("next: `fleetgen broker config --out DIR`, then `fleetgen device add ID`", file=sys.stderr)
    return 0
