"""Ingest: the controller's MQTT subscriber that feeds the store in batches.

Retained state (status, reported) is subscribed directly by every replica: MQTT 5
shared subscriptions never deliver retained messages, and these upserts are idempotent.
Telemetry and events go through a shared subscription (when the broker speaks MQTT 5)
so that controller replicas split the load; (device, seq) keys make duplicates harmless.

Nothing acknowledged is lost: the link acknowledges manually, and a batch's QoS 1
messages are acknowledged only after the batch is committed. A failed write keeps the
batch and retries it (with backoff); if the controller dies first, the broker still
holds the unacknowledged messages and delivers them again to the next session. Once a
batch is committed, each device that sent events or telemetry in it is told which seqs
are stored (`dev/{id}/stored`): only then do they leave the device's spool, since a broker
that dies can lose what it acknowledged (ADR 0091).

What a device sends is checked before it is stored: documents by the protocol codec,
and then samples with impossible values (timestamps far in the future) are dropped one
by one; each drop is counted by reason (`Ingestor.dropped`) and logged, never fatal.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import msgspec

from agent.errors import FleetgenError, ProtocolError
from agent.mqtt.backoff import Backoff
from agent.mqtt.link import Inbound, LinkItem, LinkUp, MqttLink
from agent.protocol import (
    Channel,
    Event,
    Stored,
    TelemetryBatch,
    decode,
    device_topic,
    encode,
    fleet_filter,
    parse_topic,
)
from agent.unconfirmed import ranges
from controller.config import ControllerConfig
from controller.store import ApplyResult, Ingested, Store

log = logging.getLogger(__name__)

_BATCH_MAX = 2000
_BATCH_WAIT_S = 0.2
RECEIVE_MAXIMUM = 3 * _BATCH_MAX // 2
FUTURE_SLACK_S = 300.0  # device clocks drift; a sample more than 5 minutes ahead is impossible
# Ranges per `stored` message: 800 of the widest seqs stay under the channel's 32 KiB.
_RANGES_PER_CONFIRMATION = 800


class Ingestor:
    def __init__(self, config: ControllerConfig, store: Store, clock: Callable[[], float] = time.time,
                 client_id: str | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.inbox: queue.Queue[LinkItem] = queue.Queue(maxsize=100_000)
        self.dropped: Counter[str] = Counter()
        self.ingested = 0
        self.samples = 0
        self.confirmed = 0  # seqs confirmed to devices (`stored`)
        self._stop = threading.Event()
        shared = config.shared
        subscriptions = [
            (fleet_filter(Channel.STATUS), 1),
            (fleet_filter(Channel.REPORTED), 1),
            (fleet_filter(Channel.TELEMETRY, shared=shared), 1),
            (fleet_filter(Channel.EVENTS, shared=shared), 1),
        ]
        client_id = client_id or config.mqtt.client_id or f"fleetgen-controller-{socket.gethostname()}"
        # The broker may send a batch and a half ahead of our acks (MQTT 5 Receive Maximum),
        # so it keeps sending while a batch commits; Mosquitto's default of 20 unacknowledged
        # messages held the ingest to 20 messages per commit (ADR 0071).
        self.link = MqttLink(config.mqtt, client_id=client_id[:128], inbox=self.inbox,
                             subscriptions=subscriptions, manual_ack=True,
                             receive_maximum=RECEIVE_MAXIMUM)

    @property
    def refused(self) -> int:
        return sum(self.dropped.values())

    def _drop(self, reason: str, topic: str, detail: object, n: int = 1) -> None:
        self.dropped[reason] += n
        log.warning("refused message on %s (%s): %s", topic, reason, detail)

    def parse(self, msg: Inbound, refused: dict[str, list[int]] | None = None) -> Ingested | None:
        """Validate one inbound message; None (counted and logged) if refused. Samples refused
        for good (impossible timestamps) are added to `refused` by device: they are confirmed
        too, or the device would send them forever."""
        try:
            device_id, channel = parse_topic(msg.topic)
            if channel not in (Channel.STATUS, Channel.REPORTED, Channel.TELEMETRY, Channel.EVENTS):
                raise ProtocolError(f"controller does not ingest {channel.value}")
            if not msg.payload and msg.retained:
                return None  # a cleared retained message (device removed)
            message = decode(channel, msg.payload, device_id)
        except ProtocolError as e:
            self._drop("invalid", msg.topic, e)
            return None
        now = self.clock()
        if isinstance(message, TelemetryBatch):
            good = [s for s in message.samples if s.ts <= now + FUTURE_SLACK_S]
            if len(good) < len(message.samples):
                self._drop("future_timestamp", msg.topic, f"{len(message.samples) - len(good)} samples",
                           len(message.samples) - len(good))
                if refused is not None:
                    late = (s.seq for s in message.samples if s.ts > now + FUTURE_SLACK_S)
                    refused.setdefault(device_id, []).extend(late)
                if not good:
                    return None
                message = msgspec.structs.replace(message, samples=good)
        return Ingested(device_id, now, message)

    def _drain(self) -> tuple[list[Ingested], list[Inbound], dict[str, list[int]]]:
        batch: list[Ingested] = []
        received: list[Inbound] = []
        refused: dict[str, list[int]] = {}
        deadline = time.monotonic() + _BATCH_WAIT_S
        while len(received) < _BATCH_MAX:
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, Inbound):
                received.append(item)
                parsed = self.parse(item, refused)
                if parsed is not None:
                    batch.append(parsed)
            elif isinstance(item, LinkUp) and not item.session_present:
                log.info("new broker session: retained device state will be re-delivered")
        return batch, received, refused

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self._stop.set()

    def _commit(self, batch: list[Ingested]) -> ApplyResult | None:
        try:
            result = self.store.apply(batch)
        except FleetgenError as e:
            log.error("writing %d messages to the store failed: %s; retrying", len(batch), e)
            return None
        except Exception as e:  # SQLAlchemy's errors: the database is away or refuses
            log.error("writing %d messages to the store failed: %s: %s; retrying", len(batch),
                      type(e).__name__, e)
            return None
        if result.unknown_device:
            self._drop("unknown_device", "telemetry of unregistered devices",
                       f"{result.unknown_device} batches", result.unknown_device)
        self.ingested += len(batch)
        self.samples += sum(len(i.message.samples) for i in batch if isinstance(i.message, TelemetryBatch))
        return result

    def _confirm(self, batch: list[Ingested], refused: dict[str, list[int]], unknown: frozenset[str]) -> None:
        """Tell each device which of its seqs are now stored (or refused for good). Telemetry
        of a device nobody registered is not confirmed: it was not stored."""
        seqs: dict[str, tuple[list[int], list[int]]] = {d: ([], list(s)) for d, s in refused.items()}
        for item in batch:
            msg = item.message
            if isinstance(msg, Event):
                seqs.setdefault(item.device_id, ([], []))[0].append(msg.seq)
            elif isinstance(msg, TelemetryBatch) and item.device_id not in unknown:
                seqs.setdefault(item.device_id, ([], []))[1].extend(s.seq for s in msg.samples)
        for device_id, (events, samples) in seqs.items():
            event_spans, sample_spans = ranges(events), ranges(samples)
            topic = device_topic(device_id, Channel.STORED)
            while event_spans or sample_spans:
                room = _RANGES_PER_CONFIRMATION - min(len(event_spans), _RANGES_PER_CONFIRMATION)
                stored = Stored(events=event_spans[:_RANGES_PER_CONFIRMATION], samples=sample_spans[:room])
                event_spans, sample_spans = event_spans[_RANGES_PER_CONFIRMATION:], sample_spans[room:]
                try:
                    self.link.publish(topic, encode(stored), qos=1)
                except FleetgenError as e:  # the device sends them again; they are stored once
                    log.warning("could not confirm storage to %s: %s", device_id, e)
        self.confirmed += sum(len(e) + len(s) for e, s in seqs.values())

    def run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while not self._stop.is_set():
            batch, received, refused = self._drain()
            if not received:
                continue
            # Keep the batch until it is committed: its messages are not acknowledged before.
            result = ApplyResult()
            while batch:
                committed = self._commit(batch)
                if committed is not None:
                    result = committed
                    break
                if self._stop.wait(backoff.next()):
                    self.link.stop()
                    return
            backoff.reset()
            self._confirm(batch, refused, result.unknown_ids)
            for msg in received:
                self.link.ack(msg.mid, msg.qos)
        self.link.stop()
