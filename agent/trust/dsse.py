"""DSSE envelopes signed with Ed25519: the director's signature over exact payload bytes.

Signatures cover the DSSE pre-authentication encoding (PAE) of the payload type and the
payload bytes as received, never a re-serialisation (PITFALLS, TUF). The controller
imports `sign_envelope`; the agent uses `verify_envelope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent.protocol.messages import Signature, SignedEnvelope
from agent.trust.errors import SignatureError, ThresholdError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DESIRED_PAYLOAD_TYPE = "application/vnd.fleetgen.desired-state+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    payload_type: str, payload: bytes, signers: Mapping[str, Ed25519PrivateKey]
) -> SignedEnvelope:
    """An envelope over `payload` signed by every (keyid, private key) in `signers`."""
    message = pae(payload_type, payload)
    signatures = [Signature(keyid=k, sig=key.sign(message)) for k, key in signers.items()]
    return SignedEnvelope(payload_type=payload_type, payload=payload, signatures=signatures)


def verify_envelope(
    envelope: SignedEnvelope,
    keys: Mapping[str, bytes],
    threshold: int,
    *,
    payload_type: str = DESIRED_PAYLOAD_TYPE,
    what: str = "director document",
) -> bytes:
    """Return the payload if at least `threshold` distinct trusted keys signed it.

    `keys` maps keyid to the raw 32-byte Ed25519 public key. Raises SignatureError (no
    valid signature by a trusted key) or ThresholdError (some, but fewer than threshold).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if envelope.payload_type != payload_type:
        raise SignatureError(
            f"{what}: payload type {envelope.payload_type!r}, expected {payload_type!r}"
        )
    message = pae(envelope.payload_type, envelope.payload)
    valid: set[str] = set()
    for sig in envelope.signatures:
        raw = keys.get(sig.keyid)
        if raw is None or sig.keyid in valid:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig.sig, message)
        except (InvalidSignature, ValueError):
            continue
        valid.add(sig.keyid)
    if not valid:
        signers = sorted(s.keyid[:12] for s in envelope.signatures)
        raise SignatureError(f"{what}: no valid signature by a trusted key (signed by {signers})")
    if len(valid) < threshold:
        raise ThresholdError(f"{what}: signed by {len(valid)}/{threshold} trusted keys")
    return envelope.payload
