"""The trust exception family: every refusal names the check that failed.

`TransportError` (check ``transport``) is the one error of this module that is not a
refusal: the network failed, nothing was judged; the update worker retries it.

`TrustError.check` is a short, stable word (``signature``, ``threshold``, ``expired``,
``rollback``, ``hash``, ``length``, ``wrong-device``, ``unknown-target``, ``board``,
``slow-retrieval``, ``format``) that the agent puts in its log line and in
the refusal event it sends to the controller; the message says which values failed.
"""

from __future__ import annotations

from agent.errors import FleetgenError


class TrustError(FleetgenError):
    """A bundle, metadata or director document was refused; nothing was installed."""

    check = "trust"

    def details(self) -> dict[str, str]:
        """What an `Event` carries for this refusal (kind `update.refused`)."""
        return {"check": self.check, "error": type(self).__name__}


class SignatureError(TrustError):
    """Not signed at all, or signed only by keys the trusted root does not know."""

    check = "signature"


class ThresholdError(SignatureError):
    """Signed by some trusted keys, but fewer than the role's threshold."""

    check = "threshold"


class ExpiredError(TrustError):
    """Metadata or the director document is past its expiry (freeze attack)."""

    check = "expired"


class RollbackError(TrustError):
    """A version older than (or inconsistent with) one already trusted."""

    check = "rollback"


class HashMismatchError(TrustError):
    """Content does not match the hash that signed metadata declares."""

    check = "hash"


class LengthMismatchError(TrustError):
    """A length differs from what signed metadata (or the bundle manifest) declares."""

    check = "length"


class LengthExceededError(LengthMismatchError):
    """More bytes than signed metadata declares (endless data), or a size bound exceeded."""


class WrongDeviceError(TrustError):
    """A director document for another device."""

    check = "wrong-device"


class UnknownTargetError(TrustError):
    """The target is not in the signed targets metadata, or differs from what it says."""

    check = "unknown-target"


class BoardMismatchError(TrustError):
    """The bundle's manifest does not list this board."""

    check = "board"


class SlowRetrievalError(TrustError):
    """A download fell below the throughput floor or outlasted its deadline."""

    check = "slow-retrieval"


class BundleFormatError(TrustError):
    """The bundle file is not a well-formed fleetgen bundle (bad tar, bad member, bad manifest)."""

    check = "format"


class TransportError(FleetgenError):
    """The repository could not be reached or answered with an error. Not a TrustError:
    nothing was refused on content grounds, so the update is retried (a failure, event
    `update.failed`), never reported as a refusal (`update.refused`)."""

    check = "transport"

    def details(self) -> dict[str, str]:
        return {"check": self.check, "error": type(self).__name__}


class NotProvisionedError(TrustError):
    """No pinned root metadata in the state directory."""

    check = "provisioning"
    exit_code = 2


class MetadataError(TrustError):
    """TUF metadata that is malformed or inconsistent in a way no other check names."""

    check = "metadata"
