"""The director: signs each device's desired state (DESIGN §3, §4; Uptane's idea).

A director document names the exact target (path, length, hashes from the signed
targets metadata), carries a per-device monotonic version and an expiry, and is signed
with the director key (an online key; its public half is pinned in root). The controller
publishes it retained on `dev/{id}/desired`.

Each device's version comes from the controller's store (controller/store/desired.py: one
transactional counter per device, shared by replicas): the rollouts, the power allocator,
the web API and `fleetgen director set` take it from there and `signed` signs for it.
REPO/director/versions.json, where `director set` counted before it used the store, is
only read: the store's counter never goes below what it says (`legacy_version`).
`desired` counts in that file still, for tests and tools that sign without a store.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import msgspec

from agent.fsutil import atomic_write
from agent.protocol.codec import encode
from agent.protocol.messages import DesiredState, Details, SignedEnvelope, TargetRef
from agent.protocol.topics import Channel, device_topic, validate_device_id
from agent.trust.dsse import DESIRED_PAYLOAD_TYPE, sign_envelope
from agent.trust.transport import Transport
from controller.tuf.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_EXPIRY_S = 7 * 86400


class Director:
    def __init__(self, repo: Repository) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.repo = repo
        signers = repo.signers("director")
        self._keys: dict[str, Ed25519PrivateKey] = {}
        for signer in signers:
            private = signer._private_key  # DSSE signing needs the raw key
            assert isinstance(private, Ed25519PrivateKey)
            self._keys[signer.public_key.keyid] = private
        self._versions_file = repo.path / "director" / "versions.json"
        self._lock = threading.Lock()

    def _next_version(self, device_id: str) -> int:
        with self._lock:
            self._versions_file.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                versions = msgspec.json.decode(self._versions_file.read_bytes(), type=dict[str, int])
            except FileNotFoundError:
                versions = {}
            version = versions.get(device_id, 0) + 1
            versions[device_id] = version
            atomic_write(self._versions_file, msgspec.json.encode(versions))
            return version

    def legacy_version(self, device_id: str) -> int:
        """The highest version versions.json holds for the device (0 if none)."""
        return self.legacy_versions().get(device_id, 0)

    def legacy_versions(self) -> dict[str, int]:
        """What versions.json holds (empty if there is none): read once per wave, not per device."""
        try:
            return msgspec.json.decode(self._versions_file.read_bytes(), type=dict[str, int])
        except (FileNotFoundError, msgspec.DecodeError):
            return {}

    def sign(self, state: DesiredState) -> SignedEnvelope:
        """Sign an already built desired state (exact bytes; see agent.trust.dsse)."""
        return sign_envelope(DESIRED_PAYLOAD_TYPE, encode(state), self._keys)

    def desired(
        self,
        device_id: str,
        target: str | None,
        *,
        config: Details | None = None,
        power_budget_w: float | None = None,
        expires_in_s: float = DEFAULT_EXPIRY_S,
        now: float | None = None,
    ) -> SignedEnvelope:
        """A signed desired state for `device_id` naming published target `target`, its version
        counted in versions.json (no store: tests and tools; the controller uses `signed`)."""
        validate_device_id(device_id)
        ref = self.repo.target_ref(target) if target is not None else None
        return self.signed(device_id, self._next_version(device_id), ref, config=config,
                           power_budget_w=power_budget_w, expires_in_s=expires_in_s, now=now)

    def signed(
        self,
        device_id: str,
        version: int,
        ref: TargetRef | None,
        *,
        config: Details | None = None,
        power_budget_w: float | None = None,
        expires_in_s: float = DEFAULT_EXPIRY_S,
        now: float | None = None,
    ) -> SignedEnvelope:
        """Sign version `version` of `device_id`'s desired state (the caller counted it)."""
        now = time.time() if now is None else now
        state = DesiredState(
            device_id=device_id,
            version=version,
            expires=now + expires_in_s,
            issued=now,
            target=ref,
            config=config or {},
            power_budget_w=power_budget_w,
        )
        log.debug("director: %s v%d -> %s", device_id, state.version, ref.path if ref else None)
        return self.sign(state)


def publish_desired(transport: Transport, device_id: str, envelope: SignedEnvelope) -> None:
    """Retain the document on `dev/{id}/desired` (QoS 1) so the device gets it on connect."""
    transport.publish(device_topic(device_id, Channel.DESIRED), encode(envelope), qos=1, retain=True)


def write_envelope(path: Path, envelope: SignedEnvelope) -> None:
    atomic_write(path, encode(envelope), 0o644)
