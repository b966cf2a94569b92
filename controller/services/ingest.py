"""Ingest: the controller's MQTT subscriber that feeds the store in batches.

Retained state (status, reported) is subscribed directly by every replica: MQTT 5
shared subscriptions never deliver retained messages, and these upserts are idempotent.
Telemetry and events go through a shared subscription (when the broker speaks MQTT 5)
so that controller replicas split the load; (device, seq) keys make duplicates harmless.

Nothing acknowledged is lost: the link acknowledges manually, and a batch's QoS 1
messages are acknowledged only after the batch is committed. A failed write keeps the
batch and retries it (with backoff); if the controller dies first, the broker still
holds the unacknowledged messages and delivers them again to the next session.

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
from agent.protocol import Channel, TelemetryBatch, decode, fleet_filter, parse_topic
from controller.config import ControllerConfig
from controller.store import Ingested, Store

log = logging.getLogger(__name__)

_BATCH_MAX = 2000
_BATCH_WAIT_S = 0.2
RECEIVE_MAXIMUM = 3 * _BATCH_MAX // 2
FUTURE_SLACK_S = 300.0  # device clocks drift; a sample more than 5 minutes ahead is impossible


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

    def parse(self, msg: Inbound) -> Ingested | None:
        """Validate one inbound message; None (counted and logged) if refused."""
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
                if not good:
                    return None
                message = msgspec.structs.replace(message, samples=good)
        return Ingested(device_id, now, message)

    def _drain(self) -> tuple[list[Ingested], list[Inbound]]:
        batch: list[Ingested] = []
        received: list[Inbound] = []
        deadline = time.monotonic() + _BATCH_WAIT_S
        while len(received) < _BATCH_MAX:
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, Inbound):
                received.append(item)
                parsed = self.parse(item)
                if parsed is not None:
                    batch.append(parsed)
            elif isinstance(item, LinkUp) and not item.session_present:
                log.info("new broker session: retained device state will be re-delivered")
        return batch, received

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self._stop.set()

    def _commit(self, batch: list[Ingested]) -> bool:
        try:
            result = self.store.apply(batch)
        except FleetgenError as e:
            log.error("writing %d messages to the store failed: %s; retrying", len(batch), e)
            return False
        except Exception as e:  # SQLAlchemy's errors: the database is away or refuses
            log.error("writing %d messages to the store failed: %s: %s; retrying", len(batch),
                      type(e).__name__, e)
            return False
        if result.unknown_device:
            self._drop("unknown_device", "telemetry of unregistered devices",
                       f"{result.unknown_device} batches", result.unknown_device)
        self.ingested += len(batch)
        self.samples += sum(len(i.message.samples) for i in batch if isinstance(i.message, TelemetryBatch))
        return True

    def run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while not self._stop.is_set():
            batch, received = self._drain()
            if not received:
                continue
            # Keep the batch until it is committed: its messages are not acknowledged before.
            while batch and not self._commit(batch):
                if self._stop.wait(backoff.next()):
                    self.link.stop()
                    return
            backoff.reset()
            for msg in received:
                self.link.ack(msg.mid, msg.qos)
        self.link.stop()
