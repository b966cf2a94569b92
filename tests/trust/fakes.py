"""In-memory transports implementing agent.trust.transport.Transport, for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.trust.transport import Handler, Transport


def _matches(topic_filter: str, topic: str) -> bool:
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


@dataclass
class Bus:
    """A synchronous broker: publish delivers to every matching handler at once."""

    handlers: dict[str, list[Handler]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> BusClient:
        return BusClient(self)


@dataclass
class BusClient:
    bus: Bus
    mine: dict[str, Handler] = field(default_factory=dict)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        with self.bus.lock:
            targets = [h for f, hs in self.bus.handlers.items() if _matches(f, topic) for h in hs]
        for h in targets:
            h(topic, payload)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        with self.bus.lock:
            self.bus.handlers.setdefault(topic_filter, []).append(handler)
            self.mine[topic_filter] = handler

    def unsubscribe(self, topic_filter: str) -> None:
        with self.bus.lock:
            h = self.mine.pop(topic_filter, None)
            if h is not None:
                self.bus.handlers[topic_filter].remove(h)


@dataclass
class Tap:
    """Wraps a Transport: records what is published and may drop some of it."""

    inner: Transport
    drop: Callable[[str, bytes], bool] = lambda topic, payload: False
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    dropped: int = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))
        if self.drop(topic, payload):
            self.dropped += 1
            return
        self.inner.publish(topic, payload, qos, retain)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self.inner.subscribe(topic_filter, handler)

    def unsubscribe(self, topic_filter: str) -> None:
        self.inner.unsubscribe(topic_filter)
