"""The desired state each device was last given, as the broker retains it on `dev/+/desired`.

Whoever published it (the API, `fleetgen director set --broker`, a rollout), the retained
document is what the device will get; the web layer keeps the newest per device in memory
(the broker re-delivers them all after a restart). Only documents signed by the director
keys pinned in root count: a device may publish on its own subtree, so an unsigned or
foreign document is logged and ignored, never shown as desired.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FleetgenError
from agent.protocol import Channel, DesiredState, SignedEnvelope, decode, decode_as, fleet_filter, parse_topic
from agent.trust.director import DirectorKeys, director_keys_from_root
from agent.trust.dsse import verify_envelope
from agent.trust.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DesiredView:
    version: int
    target: str | None
    power_budget_w: float | None
    issued: float
    expires: float


class DesiredWatch:
    def __init__(self, transport: Transport, repo_dir: Path) -> None:
        from controller.tuf.repository import Repository

        self._transport = transport
        self._keys: DirectorKeys = director_keys_from_root(Repository(repo_dir).root().to_dict())
        self._filter = fleet_filter(Channel.DESIRED)
        self._lock = threading.Lock()
        self._latest: dict[str, DesiredView] = {}

    def start(self) -> None:
        self._transport.subscribe(self._filter, self.on_message)

    def stop(self) -> None:
        self._transport.unsubscribe(self._filter)

    def get(self, device_id: str) -> DesiredView | None:
        with self._lock:
            return self._latest.get(device_id)

    def on_message(self, topic: str, payload: bytes) -> None:
        """Runs on the network thread: a small decode and one signature check, then a dict write."""
        try:
            device_id, _ = parse_topic(topic)
            if not payload:
                with self._lock:
                    self._latest.pop(device_id, None)
                return
            envelope = decode(Channel.DESIRED, payload, device_id)
            assert isinstance(envelope, SignedEnvelope)
            state = decode_as(DesiredState, verify_envelope(envelope, self._keys.keys, self._keys.threshold))
            if state.device_id != device_id:
                raise FleetgenError(f"document for {state.device_id!r} on {device_id!r}'s topic")
        except FleetgenError as e:
            log.warning("desired state on %s ignored: %s", topic, e)
            return
        view = DesiredView(state.version, state.target.path if state.target else None, state.power_budget_w,
                           state.issued, state.expires)
        with self._lock:
            current = self._latest.get(device_id)
            if current is None or view.version >= current.version:
                self._latest[device_id] = view
