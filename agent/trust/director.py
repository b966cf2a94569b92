"""Verification of the director document: the per-device desired state (Uptane's idea).

Pure: no disk, no network, no clock of its own. The director's public keys travel in the
TUF root metadata (field `x-fleetgen-director`, signed by the root keys), so they are
pinned with the root at provisioning and rotated through root like any other key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import ProtocolError
from agent.protocol.codec import decode_as
from agent.protocol.messages import DesiredState, SignedEnvelope, TargetRef
from agent.trust.dsse import DESIRED_PAYLOAD_TYPE, verify_envelope
from agent.trust.errors import (
    BundleFormatError,
    ExpiredError,
    RollbackError,
    SignatureError,
    UnknownTargetError,
    WrongDeviceError,
)

ROOT_FIELD = "x-fleetgen-director"
MAX_PAYLOAD = 48 * 1024


@dataclass(frozen=True, slots=True)
class DirectorKeys:
    """Trusted director keys: keyid -> raw Ed25519 public key, and a threshold."""

    keys: Mapping[str, bytes]
    threshold: int = 1


def director_keys_from_root(signed_root: Mapping[str, Any]) -> DirectorKeys:
    """Read the director keys from a (verified) root's `signed` dictionary."""
    field = signed_root.get(ROOT_FIELD)
    if not isinstance(field, dict):
        raise SignatureError(f"trusted root has no {ROOT_FIELD!r}: no director key is pinned")
    try:
        keys = {
            keyid: bytes.fromhex(key["keyval"]["public"])
            for keyid, key in field["keys"].items()
            if key["keytype"] == "ed25519" and key["scheme"] == "ed25519"
        }
        threshold = int(field.get("threshold", 1))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SignatureError(f"trusted root: malformed {ROOT_FIELD!r} ({e})") from None
    if not keys or threshold < 1:
        raise SignatureError(f"trusted root: {ROOT_FIELD!r} holds no usable ed25519 key")
    return DirectorKeys(keys=keys, threshold=threshold)


def peek_desired(envelope: SignedEnvelope) -> DesiredState:
    """Decode the payload WITHOUT checking signatures: for cheap early refusals only."""
    try:
        return decode_as(DesiredState, envelope.payload, MAX_PAYLOAD)
    except ProtocolError as e:
        raise BundleFormatError(f"director document: {e}") from None


def claimed_version(envelope: SignedEnvelope) -> int | None:
    """The version a refused document claims, unverified, for the refusal event: the
    controller ignores a refusal of an older document than the one it sent (a broker that
    lost the newer retained copy replays the older one after a restart)."""
    try:
        return peek_desired(envelope).version
    except BundleFormatError:
        return None


def check_claims(state: DesiredState, *, device_id: str, now: float, highest_version: int) -> None:
    """Device, version and expiry of a desired state.

    Run on the unverified payload first (`peek_desired`: refusing costs nothing, and a stale,
    misrouted or expired document then causes no repository traffic), and again by
    `verify_desired` on the signed one. A version equal to `highest_version` is accepted
    (the retained document delivered again); an older one is a replay and refused.
    """
    if state.device_id != device_id:
        raise WrongDeviceError(
            f"director document is for device {state.device_id!r}, this is {device_id!r}"
        )
    if state.version < highest_version:
        raise RollbackError(
            f"director document version {state.version} is older than {highest_version} "
            "already seen (replayed)"
        )
    if state.expires <= now:
        raise ExpiredError(f"director document v{state.version} expired at {state.expires:.0f}")


def verify_desired(
    envelope: SignedEnvelope,
    keys: DirectorKeys,
    *,
    device_id: str,
    now: float,
    highest_version: int,
) -> DesiredState:
    """Check signature, then device, version and expiry; return the trusted desired state."""
    payload = verify_envelope(envelope, keys.keys, keys.threshold, payload_type=DESIRED_PAYLOAD_TYPE)
    try:
        state = decode_as(DesiredState, payload, MAX_PAYLOAD)
    except ProtocolError as e:
        raise BundleFormatError(f"director document: {e}") from None
    check_claims(state, device_id=device_id, now=now, highest_version=highest_version)
    return state


def check_target_matches(ref: TargetRef, length: int, hashes: Mapping[str, str]) -> None:
    """The director's target must be exactly the signed TUF target (length and hashes)."""
    if ref.length != length:
        raise UnknownTargetError(
            f"director names {ref.path} with length {ref.length}, signed targets say {length}"
        )
    common = set(ref.hashes) & set(hashes)
    if not common:
        raise UnknownTargetError(f"director names {ref.path} with no hash the signed targets carry")
    for algo in sorted(common):
        if ref.hashes[algo] != hashes[algo]:
            raise UnknownTargetError(
                f"director names {ref.path} with {algo} {ref.hashes[algo][:16]}…, "
                f"signed targets say {hashes[algo][:16]}…"
            )
