"""A production Mosquitto configuration for a fleet (`fleetgen broker config`, docs/broker.md).

TLS only, a client certificate from the device CA required, the certificate's CN as the
username, the CRL, no anonymous access, and an ACL built from the channel table of DESIGN
§3 (agent/protocol CHANNELS): each device writes the channels it sends and reads the ones
it receives, under its own `fleetgen/v1/dev/%u/` only; the controller reads every device's
channels and writes the ones devices receive. The files under systemd/mosquitto/ are this
module's output with the default paths (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.protocol import CHANNELS, PREFIX, Channel
from controller.pki import CONTROLLER_IDENTITY

DEFAULT_CERTS = PurePosixPath("/etc/mosquitto/fleetgen")
DEFAULT_CONTROLLER_CRL = PurePosixPath("/var/lib/fleetgen-controller/pki/crl.pem")
CONF_NAME = "fleetgen.conf"
ACL_NAME = "fleetgen.acl"


@dataclass(frozen=True, slots=True)
class BrokerLayout:
    """Where the broker finds its files, and where it listens."""

    certs: PurePosixPath = DEFAULT_CERTS
    port: int = 8883
    bind: str | None = None  # all addresses
    # The controller's CRL, which the fleetgen-crl.path unit copies into `certs` on change.
    controller_crl: PurePosixPath = DEFAULT_CONTROLLER_CRL

    @property
    def acl(self) -> PurePosixPath:
        return self.certs / ACL_NAME


def _device_filter(channel: Channel, who: str) -> str:
    return f"{PREFIX}/dev/{who}/{channel.value}"


def render_acl() -> str:
    lines = [
        "# fleetgen broker ACL (written by `fleetgen broker config`; directions from DESIGN §3).",
        "# Mosquitto applies read rules at delivery: a forbidden SUBSCRIBE is still granted, and",
        "# nothing is delivered (PITFALLS). No rule names a client id (%c): a device picks its own.",
        "",
        f"# The controller (certificate CN {CONTROLLER_IDENTITY}, outside the device id grammar).",
        "# It reads every device channel, writes what devices receive, and may clear a removed",
        "# device's retained status and reported state.",
        f"user {CONTROLLER_IDENTITY}",
    ]
    for channel in Channel:
        lines.append(f"topic read {_device_filter(channel, '+')}")
    for channel, spec in CHANNELS.items():
        if not spec.from_agent or spec.retained:
            lines.append(f"topic write {_device_filter(channel, '+')}")
    lines += [
        "",
        "# Each device (username = certificate CN = device id): its own subtree only, and in",
        "# each channel only the direction the protocol gives it.",
    ]
    for channel, spec in CHANNELS.items():
        lines.append(f"pattern {'write' if spec.from_agent else 'read'} {_device_filter(channel, '%u')}")
    return "\n".join(lines) + "\n"


def render_conf(layout: BrokerLayout = BrokerLayout()) -> str:
    c = layout.certs
    listener = f"listener {layout.port} {layout.bind}" if layout.bind else f"listener {layout.port}"
    return "\n".join([
        "# fleetgen fleet listener (written by `fleetgen broker config`; docs/broker.md).",
        "# Install as /etc/mosquitto/conf.d/fleetgen.conf with the files of certs/ in",
        f"# {c}/ (readable by the mosquitto user; server.key 0640 root:mosquitto).",
        "per_listener_settings true",
        "",
        listener,
        f"cafile {c}/ca.pem",
        f"certfile {c}/server.pem",
        f"keyfile {c}/server.key",
        "tls_version tlsv1.2",
        "# Only certificates of the fleet's own device CA, and none it has revoked. Mosquitto",
        "# reads the CRL at start and on SIGHUP (`systemctl reload mosquitto`; fleetgen-crl.path",
        "# does that whenever the controller revokes a device).",
        f"crlfile {c}/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {layout.acl}",
        "",
        "# Devices keep persistent sessions: QoS 1 messages queue while they are away (bounded).",
        "persistence true",
        "max_queued_messages 10000",
        "",
    ])


def render_crl_units(layout: BrokerLayout = BrokerLayout()) -> dict[str, str]:
    """A path unit that copies the controller's re-signed CRL to the broker and reloads it."""
    path = "\n".join([
        "# Watches the controller's CRL; on every revocation fleetgen-crl.service hands it to Mosquitto.",
        "[Unit]",
        "Description=fleetgen device CRL watch",
        "",
        "[Path]",
        f"PathChanged={layout.controller_crl}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
    service = "\n".join([
        "# Copies the controller's CRL where Mosquitto reads it and makes Mosquitto re-read it.",
        "[Unit]",
        "Description=fleetgen: hand the device CRL to Mosquitto",
        "After=mosquitto.service",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart=/usr/bin/install -m 0644 {layout.controller_crl} {layout.certs}/crl.pem",
        "ExecStart=/usr/bin/systemctl try-reload-or-restart mosquitto.service",
        "",
    ])
    return {"fleetgen-crl.path": path, "fleetgen-crl.service": service}


def render(layout: BrokerLayout = BrokerLayout()) -> dict[str, str]:
    """Every text file of the configuration, by name."""
    return {CONF_NAME: render_conf(layout), ACL_NAME: render_acl(), **render_crl_units(layout)}
