"""Translate python-tuf's exceptions into the trust family (one place, one mapping)."""

from __future__ import annotations

import re

from agent.trust.errors import (
    ExpiredError,
    HashMismatchError,
    LengthExceededError,
    MetadataError,
    RollbackError,
    SignatureError,
    SlowRetrievalError,
    ThresholdError,
    TransportError,
    TrustError,
)

_SIGNED_BY = re.compile(r"signed by (\d+)/(\d+)")


def translate(e: Exception) -> TrustError | TransportError:
    """The TrustError for a python-tuf exception (RepositoryError or DownloadError)."""
    from tuf.api import exceptions as tx

    msg = f"TUF metadata: {e}"
    if isinstance(e, TrustError | TransportError):
        return e
    if isinstance(e, tx.UnsignedMetadataError):
        m = _SIGNED_BY.search(str(e))
        if m and 0 < int(m.group(1)) < int(m.group(2)):
            return ThresholdError(msg)
        return SignatureError(msg)
    if isinstance(e, tx.ExpiredMetadataError):
        return ExpiredError(msg)
    if isinstance(e, tx.BadVersionNumberError):
        return RollbackError(msg)
    if isinstance(e, tx.LengthOrHashMismatchError):
        # Length and hashes together are what signed metadata says of the content.
        return HashMismatchError(msg)
    if isinstance(e, tx.DownloadLengthMismatchError):
        return LengthExceededError(msg)
    if isinstance(e, tx.SlowRetrievalError):
        return SlowRetrievalError(msg)
    if isinstance(e, tx.DownloadError):
        return TransportError(f"repository: {e}")
    return MetadataError(msg) if isinstance(e, tx.RepositoryError) else TrustError(msg)
