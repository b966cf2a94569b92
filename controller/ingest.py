"""Ingest: the controller's MQTT subscriber that feeds the store in batches.

Retained state (status, reported) is subscribed directly by every replica: MQTT 5
shared subscriptions never deliver retained messages, and these upserts are idempotent.
Telemetry and events go through a shared subscription (when the broker speaks MQTT 5)
so that controller replicas split the load; (device, seq) keys make duplicates harmless.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable

from agent.errors import ProtocolError
from agent.mqtt.link import Inbound, LinkItem, LinkUp, MqttLink
from agent.protocol import Channel, decode, fleet_filter, parse_topic
from controller.config import ControllerConfig
from controller.store import Ingested, Store

log = logging.getLogger(__name__)

_BATCH_MAX = 500
_BATCH_WAIT_S = 0.2


class Ingestor:
    def __init__(self, config: ControllerConfig, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.inbox: queue.Queue[LinkItem] = queue.Queue(maxsize=100_000)
        self.refused = 0
        self.ingested = 0
        self._stop = threading.Event()
        shared = config.shared
        subscriptions = [
            (fleet_filter(Channel.STATUS), 1),
            (fleet_filter(Channel.REPORTED), 1),
            (fleet_filter(Channel.TELEMETRY, shared=shared), 1),
            (fleet_filter(Channel.EVENTS, shared=shared), 1),
        ]
        client_id = config.mqtt.client_id or f"fleetgen-controller-{socket.gethostname()}"
        self.link = MqttLink(config.mqtt, client_id=client_id[:128], inbox=self.inbox, subscriptions=subscriptions)

    def parse(self, msg: Inbound) -> Ingested | None:
        """Validate one inbound message; None (logged) if refused."""
        try:
            device_id, channel = parse_topic(msg.topic)
            if channel not in (Channel.STATUS, Channel.REPORTED, Channel.TELEMETRY, Channel.EVENTS):
                raise ProtocolError(f"controller does not ingest {channel.value}")
            if not msg.payload and msg.retained:
                return None  # a cleared retained message (device removed)
            return Ingested(device_id, self.clock(), decode(channel, msg.payload, device_id))
        except ProtocolError as e:
            self.refused += 1
            log.warning("refused message on %s: %s", msg.topic, e)
            return None

    def _drain(self) -> list[Ingested]:
        batch: list[Ingested] = []
        deadline = time.monotonic() + _BATCH_WAIT_S
        while len(batch) < _BATCH_MAX:
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, Inbound):
                parsed = self.parse(item)
                if parsed is not None:
                    batch.append(parsed)
            elif isinstance(item, LinkUp) and not item.session_present:
                log.info("new broker session: retained device state will be re-delivered")
        return batch

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            batch = self._drain()
            if not batch:
                continue
            try:
                self.store.apply(batch)
                self.ingested += len(batch)
            except Exception:
                # Keep serving: a database hiccup loses this batch's latest-state rows, which
                # retained messages and the next telemetry batch will bring again.
                log.exception("writing %d messages to the store failed", len(batch))
        self.link.stop()
