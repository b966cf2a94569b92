"""Errors of the fleet domain."""

from __future__ import annotations

from agent.errors import UsageError


class FleetError(UsageError):
    """A fleet operation names something that is not there or cannot be done to it
    (unknown group or device, a finished rollout asked to pause): bad input, exit 2."""


class RolloutSpecError(FleetError):
    """A rollout's waves or thresholds are malformed."""
