"""Encoding and validated decoding of wire documents.

`decode` is the one gate every inbound payload goes through: size limit first, then
JSON and schema validation, then the schema version, then (for device documents) the
device id in the payload must match the topic. Every refusal is a ProtocolError whose
message names the problem; callers log it and drop the message.
"""

from __future__ import annotations

import struct
from typing import TypeVar

import msgspec

from agent.errors import ProtocolError
from agent.protocol.messages import (
    SCHEMA,
    Event,
    Message,
    Reported,
    Request,
    ResponseHeader,
    SignedEnvelope,
    Status,
    Stored,
    TelemetryBatch,
)
from agent.protocol.topics import CHANNELS, Channel

M = TypeVar("M", bound=msgspec.Struct)

# What each channel carries. `desired` is a signed envelope whose payload is a
# DesiredState; `resp` is a binary frame (see `decode_response`).
CHANNEL_TYPES: dict[Channel, type[msgspec.Struct]] = {
    Channel.STATUS: Status,
    Channel.REPORTED: Reported,
    Channel.DESIRED: SignedEnvelope,
    Channel.TELEMETRY: TelemetryBatch,
    Channel.EVENTS: Event,
    Channel.REQ: Request,
    Channel.STORED: Stored,
}

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder] = {}

_FRAME_MAGIC = b"FGR1"
_FRAME_HEAD = struct.Struct("!4sI")
_MAX_FRAME_HEADER = 4096


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_as(cls: type[M], payload: bytes, max_bytes: int | None = None) -> M:
    """Decode and validate `payload` as `cls`; ProtocolError names what is wrong."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise ProtocolError(f"{cls.__name__}: payload of {len(payload)} bytes exceeds {max_bytes}")
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    try:
        message = decoder.decode(payload)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"{cls.__name__}: {e}") from None
    except msgspec.DecodeError as e:
        raise ProtocolError(f"{cls.__name__}: not valid JSON ({e})") from None
    if isinstance(message, Message) and message.schema != SCHEMA:
        raise ProtocolError(
            f"{cls.__name__}: schema version {message.schema} is not supported (expected {SCHEMA})"
        )
    return message


def decode(channel: Channel, payload: bytes, device_id: str | None = None) -> msgspec.Struct:
    """Decode a document received on `channel` of device `device_id` (from the topic)."""
    if channel is Channel.RESP:
        raise ProtocolError("resp carries binary frames: use decode_response")
    message = decode_as(CHANNEL_TYPES[channel], payload, CHANNELS[channel].max_bytes)
    claimed = getattr(message, "device_id", None)
    if device_id is not None and claimed is not None and claimed != device_id:
        raise ProtocolError(
            f"{channel.value}: payload names device {claimed!r} but arrived on {device_id!r}'s topic"
        )
    return message


def encode_response(header: ResponseHeader, body: bytes = b"") -> bytes:
    """A `resp` frame: magic, header length, JSON header, then raw body bytes (no base64)."""
    head = _encoder.encode(header)
    return _FRAME_HEAD.pack(_FRAME_MAGIC, len(head)) + head + body


def decode_response(payload: bytes) -> tuple[ResponseHeader, bytes]:
    limit = CHANNELS[Channel.RESP].max_bytes
    if len(payload) > limit:
        raise ProtocolError(f"resp: frame of {len(payload)} bytes exceeds {limit}")
    if len(payload) < _FRAME_HEAD.size:
        raise ProtocolError(f"resp: frame of {len(payload)} bytes is shorter than its header")
    magic, head_len = _FRAME_HEAD.unpack_from(payload)
    if magic != _FRAME_MAGIC:
        raise ProtocolError(f"resp: bad frame magic {magic!r}")
    if head_len > _MAX_FRAME_HEADER or _FRAME_HEAD.size + head_len > len(payload):
        raise ProtocolError(f"resp: header length {head_len} is out of bounds")
    start = _FRAME_HEAD.size
    header = decode_as(ResponseHeader, payload[start : start + head_len])
    return header, payload[start + head_len :]
