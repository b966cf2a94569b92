"""The tiny publish/subscribe interface that the MQTT fetcher and the controller's
responder need. `agent.mqtt.link.MqttLink` implements it.

Contract of `Transport`:

- `publish(topic, payload, qos=1, retain=False)`: queue a message; never blocks for
  long (the outgoing queue is bounded); raises a FleetgenError if it cannot queue.
- `subscribe(topic_filter, handler)`: from now on, and again after every reconnect,
  call `handler(topic, payload)` for each message matching the filter. Handlers run on
  the network thread: they only validate and enqueue, never block, never raise.
- `unsubscribe(topic_filter)`: stop delivering to that filter's handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Handler = Callable[[str, bytes], None]


class Transport(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...
