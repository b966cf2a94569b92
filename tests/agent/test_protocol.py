from __future__ import annotations

import time

import msgspec
import pytest

from agent.errors import ProtocolError
from agent.protocol import (
    CHANNELS,
    Channel,
    Event,
    Reported,
    ResponseHeader,
    Status,
    TelemetryBatch,
    TelemetrySample,
    decode,
    decode_response,
    device_filter,
    device_topic,
    encode,
    encode_response,
    fleet_filter,
    parse_topic,
    validate_device_id,
)


@pytest.mark.parametrize("good", ["a", "dev-1", "0abc", "a" * 63])
def test_valid_device_ids(good: str) -> None:
    assert validate_device_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "A", "dev_1", "a" * 64, "dev/1", "+", "#", "dév", None, 5])
def test_invalid_device_ids_are_refused_before_reaching_a_topic(bad: object) -> None:
    with pytest.raises(ProtocolError, match="invalid device id"):
        validate_device_id(bad)
    if isinstance(bad, str):
        with pytest.raises(ProtocolError):
            device_topic(bad, Channel.STATUS)


def test_topic_tree() -> None:
    assert device_topic("d1", Channel.DESIRED) == "fleetgen/v1/dev/d1/desired"
    assert device_filter("d1") == "fleetgen/v1/dev/d1/#"
    assert fleet_filter(Channel.TELEMETRY) == "fleetgen/v1/dev/+/telemetry"
    assert fleet_filter(Channel.EVENTS, shared=True) == "$share/fleetgen/fleetgen/v1/dev/+/events"
    assert parse_topic("fleetgen/v1/dev/d1/events") == ("d1", Channel.EVENTS)


@pytest.mark.parametrize("topic", ["fleetgen/v1/dev/d1", "fleetgen/v2/dev/d1/status", "fleetgen/v1/dev/D1/status",
                                   "fleetgen/v1/dev/d1/nope", "fleetgen/v1/dev/d1/status/x", "x"])
def test_parse_topic_refuses_foreign_topics(topic: str) -> None:
    with pytest.raises(ProtocolError):
        parse_topic(topic)


def test_roundtrip_and_unknown_fields_ignored() -> None:
    s = Status(state="online", ts=time.time(), agent_version="1")
    assert decode(Channel.STATUS, encode(s)) == s
    raw = b'{"schema":1,"state":"offline","ts":1.0,"future_field":{"a":1}}'
    assert decode(Channel.STATUS, raw) == Status(state="offline", ts=1.0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b'{"schema":1,"state":"sleeping","ts":1}', "state"),
        (b'{"schema":1,"ts":1}', "missing required field `state`"),
        (b'{"schema":2,"state":"online","ts":1}', "schema version 2"),
        (b'{"schema":1,"state":"online","ts":-5}', "ts"),
        (b"[]", "Expected `object`"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(Channel.STATUS, payload)


def test_size_limit_is_checked_before_parsing() -> None:
    limit = CHANNELS[Channel.EVENTS].max_bytes
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(Channel.EVENTS, b" " * (limit + 1))


def test_payload_device_must_match_topic_device() -> None:
    r = Reported(device_id="d1", agent_version="1", board="x", ts=1.0)
    assert decode(Channel.REPORTED, encode(r), "d1") == r
    with pytest.raises(ProtocolError, match="names device 'd1'"):
        decode(Channel.REPORTED, encode(r), "d2")


def test_telemetry_batch_bounds() -> None:
    sample = TelemetrySample(seq=1, ts=1.0, cpu_pct=1, mem_used_mb=1, mem_total_mb=2)
    ok = TelemetryBatch(device_id="d", samples=[sample])
    assert decode(Channel.TELEMETRY, encode(ok)) == ok
    with pytest.raises(ProtocolError, match="samples"):
        decode(Channel.TELEMETRY, encode(msgspec.structs.replace(ok, samples=[])))


def test_event_kind_pattern() -> None:
    e = Event(device_id="d", seq=0, ts=1.0, kind="install.progress")
    assert decode(Channel.EVENTS, encode(e)) == e
    with pytest.raises(ProtocolError, match="kind"):
        decode(Channel.EVENTS, encode(msgspec.structs.replace(e, kind="Bad Kind")))


def test_response_frames_carry_raw_bytes() -> None:
    body = bytes(range(256)) * 4
    header, got = decode_response(encode_response(ResponseHeader(id="r1", ok=True, offset=7, total=99), body))
    assert got == body and header.offset == 7 and header.total == 99


@pytest.mark.parametrize("frame", [b"", b"FGR1", b"XXXX\x00\x00\x00\x02{}", b"FGR1\x00\x00\xff\xff{}",
                                   b"FGR1\x00\x00\x00\x02{}"])
def test_bad_response_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_response(frame)


def test_a_stored_confirmation_with_a_reversed_range_is_refused() -> None:
    from agent.protocol import Channel, Stored, decode

    assert decode(Channel.STORED, b'{"events": [[3, 3]], "samples": [[1, 9]]}') == Stored(
        events=[(3, 3)], samples=[(1, 9)])
    with pytest.raises(ProtocolError, match=r"range \[5, 3\] ends before it starts"):
        decode(Channel.STORED, b'{"samples": [[5, 3]]}')
    with pytest.raises(ProtocolError, match="Stored"):
        decode(Channel.STORED, b'{"events": [[-1, 2]]}')
