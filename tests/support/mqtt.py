"""A plain MQTT client for tests that play a peer (a controller, a device) on a real broker."""

from __future__ import annotations

import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def subscribed_client(port: int, client_id: str, topic: str,
                      on_message: Callable[[paho.Client, object, paho.MQTTMessage], None]) -> paho.Client:
    """Connected, subscribed at QoS 1 (its SUBACK in: the tests' brokers have no ACL that could
    refuse it silently) and looping on its own thread; `close` it when done."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    if not subscribed.wait(10):
        close(client)
        raise TimeoutError(f"no SUBACK for {topic} within 10 s")
    return client


def close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()
