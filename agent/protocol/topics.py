"""The fleetgen topic tree (DESIGN §3): every topic is built and parsed here.

Everything a device may touch lives under `fleetgen/v1/dev/{device_id}/`, so a single
broker ACL pattern (`fleetgen/v1/dev/%u/#`) confines each device to its own subtree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from agent.errors import ProtocolError

PREFIX = "fleetgen/v1"
SHARED_GROUP = "fleetgen"

_DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Channel(StrEnum):
    STATUS = "status"
    REPORTED = "reported"
    DESIRED = "desired"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    REQ = "req"
    RESP = "resp"
    STORED = "stored"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    qos: int
    retained: bool
    max_bytes: int
    from_agent: bool


KiB = 1024

# Size limits are enforced on receipt, before any parsing. `resp` carries bundle
# chunks of at most 256 KiB (PITFALLS: paho and slow links) plus a small header.
CHANNELS: dict[Channel, ChannelSpec] = {
    Channel.STATUS: ChannelSpec(qos=1, retained=True, max_bytes=1 * KiB, from_agent=True),
    Channel.REPORTED: ChannelSpec(qos=1, retained=True, max_bytes=32 * KiB, from_agent=True),
    Channel.DESIRED: ChannelSpec(qos=1, retained=True, max_bytes=64 * KiB, from_agent=False),
    Channel.TELEMETRY: ChannelSpec(qos=1, retained=False, max_bytes=256 * KiB, from_agent=True),
    Channel.EVENTS: ChannelSpec(qos=1, retained=False, max_bytes=32 * KiB, from_agent=True),
    Channel.REQ: ChannelSpec(qos=1, retained=False, max_bytes=8 * KiB, from_agent=True),
    Channel.RESP: ChannelSpec(qos=1, retained=False, max_bytes=260 * KiB, from_agent=False),
    Channel.STORED: ChannelSpec(qos=1, retained=False, max_bytes=32 * KiB, from_agent=False),
}


def validate_device_id(device_id: object) -> str:
    """Return `device_id` if it is a valid device id, else raise ProtocolError naming it."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ProtocolError(
            f"invalid device id {device_id!r}: expected [a-z0-9][a-z0-9-]{{0,62}}"
        )
    return device_id


def device_topic(device_id: str, channel: Channel) -> str:
    return f"{PREFIX}/dev/{validate_device_id(device_id)}/{channel.value}"


def device_filter(device_id: str) -> str:
    """The subtree one device owns; also the ACL pattern with `%u` for the id."""
    return f"{PREFIX}/dev/{validate_device_id(device_id)}/#"


def fleet_filter(channel: Channel, shared: bool = False) -> str:
    """Subscription filter for one channel of every device (controller side).

    With `shared`, an MQTT 5 shared subscription so that controller replicas split the load.
    """
    topic = f"{PREFIX}/dev/+/{channel.value}"
    return f"$share/{SHARED_GROUP}/{topic}" if shared else topic


def parse_topic(topic: str) -> tuple[str, Channel]:
    """Split a device topic into (device_id, channel); ProtocolError if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "dev":
        raise ProtocolError(f"topic {topic!r} is not a fleetgen device topic")
    device_id = validate_device_id(parts[3])
    try:
        channel = Channel(parts[4])
    except ValueError:
        raise ProtocolError(f"topic {topic!r}: unknown channel {parts[4]!r}") from None
    return device_id, channel
