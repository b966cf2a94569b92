"""Message schemas of the MQTT contract (DESIGN §3), as msgspec Structs.

Documents are JSON, UTF-8, with a `schema` version field. Unknown fields are ignored
(a newer controller may add some); missing or ill-typed required fields are refused.
Constraints (lengths, ranges, patterns) live on the types, so decoding validates.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

SCHEMA = 1

DeviceId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
ShortText = Annotated[str, Meta(max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Timestamp = Annotated[float, Meta(ge=0)]
Scalar = str | int | float | bool | None
Details = Annotated[dict[Annotated[str, Meta(max_length=64)], Scalar], Meta(max_length=64)]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
CorrelationId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class Message(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every wire document: carries the schema version."""

    schema: int = SCHEMA


class Status(Message, kw_only=True, frozen=True):
    """`dev/{id}/status` (retained). The `offline` one is the agent's Last Will."""

    state: Literal["online", "offline"]
    ts: Timestamp
    agent_version: ShortText = ""


class PowerReport(msgspec.Struct, kw_only=True, frozen=True):
    budget_w: Annotated[float, Meta(ge=0)] | None = None
    draw_w: Annotated[float, Meta(ge=0)] | None = None
    estimated: bool = False
    knobs: Details = {}


class UpdateReport(msgspec.Struct, kw_only=True, frozen=True):
    """The update lifecycle's state (agent/update/machine.py phases)."""

    phase: ShortText = "idle"
    target: ShortText | None = None
    last_result: ShortText | None = None
    last_error: Text | None = None


class Reported(Message, kw_only=True, frozen=True):
    """`dev/{id}/reported` (retained): what the device is and runs now."""

    device_id: DeviceId
    agent_version: ShortText
    board: ShortText
    ts: Timestamp
    accelerators: Annotated[list[ShortText], Meta(max_length=32)] = []
    providers: Annotated[list[ShortText], Meta(max_length=32)] = []
    active_bundle: ShortText | None = None
    previous_bundle: ShortText | None = None
    # The directory `current` names (bundles/NAME-VERSION-SHA16): what runs, exactly.
    slot: ShortText | None = None
    desired_version: Annotated[int, Meta(ge=0)] = 0
    power: PowerReport | None = None
    health: Literal["ok", "degraded", "failed", "unknown"] = "unknown"
    update: UpdateReport | None = None
    # Operator-set labels (site, rack, ...) the controller's groups can select on.
    labels: Details = {}


class TelemetrySample(msgspec.Struct, kw_only=True, frozen=True):
    seq: Annotated[int, Meta(ge=0)]
    ts: Timestamp
    cpu_pct: Annotated[float, Meta(ge=0, le=100 * 1024)]
    mem_used_mb: Annotated[float, Meta(ge=0)]
    mem_total_mb: Annotated[float, Meta(ge=0)]
    temp_c: float | None = None
    power_w: Annotated[float, Meta(ge=0)] | None = None
    power_estimated: bool = False
    tokens_per_s: Annotated[float, Meta(ge=0)] | None = None
    latency_ms: Annotated[float, Meta(ge=0)] | None = None
    requests: Annotated[int, Meta(ge=0)] = 0
    errors: Annotated[int, Meta(ge=0)] = 0
    power: PowerReport | None = None  # budget, draw and the governor's knobs at this sample


class TelemetryBatch(Message, kw_only=True, frozen=True):
    """`dev/{id}/telemetry`: samples in sequence order; the controller dedups by (device, seq)."""

    device_id: DeviceId
    samples: Annotated[list[TelemetrySample], Meta(min_length=1, max_length=1000)]


class Event(Message, kw_only=True, frozen=True):
    """`dev/{id}/events`: install progress, health results, rollbacks, refusals, errors."""

    device_id: DeviceId
    seq: Annotated[int, Meta(ge=0)]
    ts: Timestamp
    kind: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: Text = ""
    details: Details = {}


Seq = Annotated[int, Meta(ge=0)]
SeqRanges = Annotated[list[tuple[Seq, Seq]], Meta(max_length=1024)]


class Stored(Message, kw_only=True, frozen=True):
    """`dev/{id}/stored` (controller → device): what the controller has committed to its store,
    or refused for good, as inclusive `[first, last]` ranges of seq. The device's spool lets
    those rows go only now, not on the broker's PUBACK: a broker acknowledges a QoS 1 message
    before it persists it, so its crash loses what it acknowledged (ADR 0091)."""

    events: SeqRanges = []
    samples: SeqRanges = []

    def __post_init__(self) -> None:
        for first, last in (*self.events, *self.samples):
            if first > last:
                raise ValueError(f"range [{first}, {last}] ends before it starts")


class TargetRef(msgspec.Struct, kw_only=True, frozen=True):
    """The exact TUF target a director document names (path, length, hashes)."""

    path: Annotated[str, Meta(min_length=1, max_length=512)]
    length: Annotated[int, Meta(ge=0)]
    hashes: Annotated[dict[Annotated[str, Meta(max_length=32)], ShortText], Meta(min_length=1)]


class DesiredState(Message, kw_only=True, frozen=True):
    """The payload the director signs for one device (carried in a `SignedEnvelope`)."""

    device_id: DeviceId
    version: Annotated[int, Meta(ge=1)]
    expires: Timestamp
    issued: Timestamp = 0.0
    target: TargetRef | None = None
    config: Details = {}
    power_budget_w: Annotated[float, Meta(ge=0)] | None = None


class Signature(msgspec.Struct, frozen=True):
    keyid: ShortText
    sig: Annotated[bytes, Meta(max_length=1024)]


class SignedEnvelope(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """`dev/{id}/desired` (retained): a DSSE envelope. Signatures cover the exact payload
    bytes (DSSE PAE), never a re-serialisation."""

    payload_type: ShortText
    payload: Annotated[bytes, Meta(max_length=48 * 1024)]
    signatures: Annotated[list[Signature], Meta(min_length=1, max_length=16)]


class Request(Message, kw_only=True, frozen=True):
    """`dev/{id}/req`: the agent asks the controller (metadata, bundle chunks, commands).

    The answer comes on `dev/{id}/resp` as a `ResponseHeader` frame with the same `id`.
    """

    id: CorrelationId
    op: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")]
    path: Annotated[str, Meta(max_length=512)] = ""
    offset: Annotated[int, Meta(ge=0)] = 0
    length: Annotated[int, Meta(ge=0, le=256 * 1024)] = 0
    args: Details = {}


class ResponseHeader(Message, kw_only=True, frozen=True):
    """Header of a `dev/{id}/resp` frame; the frame's body carries raw bytes (a chunk)."""

    id: CorrelationId
    ok: bool
    error: Text = ""
    offset: Annotated[int, Meta(ge=0)] = 0
    total: Annotated[int, Meta(ge=0)] | None = None
