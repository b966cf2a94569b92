"""Events the agent sends about updates (`dev/{id}/events`), built in one place."""

from __future__ import annotations

import time

from agent.protocol.messages import Event
from agent.trust.errors import TrustError

REFUSED = "update.refused"
INSTALLED = "update.installed"


def refusal_event(device_id: str, seq: int, error: TrustError, ts: float | None = None) -> Event:
    """The event for a refused update: `details.check` names the failed check."""
    return Event(
        device_id=device_id,
        seq=seq,
        ts=time.time() if ts is None else ts,
        kind=REFUSED,
        level="error",
        message=str(error)[:4096],
        details=dict(error.details()),
    )


def installed_event(
    device_id: str, seq: int, name: str, version: str, sha256: str, ts: float | None = None
) -> Event:
    return Event(
        device_id=device_id,
        seq=seq,
        ts=time.time() if ts is None else ts,
        kind=INSTALLED,
        message=f"installed {name} {version}",
        details={"name": name, "version": version, "sha256": sha256},
    )
