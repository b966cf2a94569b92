"""Errors of the fleet domain."""

from __future__ import annotations

from agent.errors import FleetgenError, UsageError


class FleetError(FleetgenError):
    """A fleet operation cannot be done (unknown group, unknown rollout, ...)."""


class RolloutSpecError(UsageError):
    """A rollout's waves or thresholds are malformed (a usage error: exit 2)."""
