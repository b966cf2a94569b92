"""The agent/controller contract: topics, message schemas, codec.

The controller imports these; it never re-declares a topic string or a field.
"""

from agent.protocol.codec import decode, decode_as, decode_response, encode, encode_response
from agent.protocol.messages import (
    SCHEMA,
    DesiredState,
    Event,
    PowerReport,
    Reported,
    Request,
    ResponseHeader,
    Signature,
    SignedEnvelope,
    Status,
    Stored,
    TargetRef,
    TelemetryBatch,
    TelemetrySample,
    UpdateReport,
)
from agent.protocol.topics import (
    CHANNELS,
    PREFIX,
    Channel,
    device_filter,
    device_topic,
    fleet_filter,
    parse_topic,
    validate_device_id,
)

__all__ = [
    "CHANNELS",
    "PREFIX",
    "SCHEMA",
    "Channel",
    "DesiredState",
    "Event",
    "PowerReport",
    "Reported",
    "Request",
    "ResponseHeader",
    "Signature",
    "SignedEnvelope",
    "Status",
    "Stored",
    "TargetRef",
    "TelemetryBatch",
    "TelemetrySample",
    "UpdateReport",
    "decode",
    "decode_as",
    "decode_response",
    "device_filter",
    "device_topic",
    "encode",
    "encode_response",
    "fleet_filter",
    "parse_topic",
    "validate_device_id",
]
