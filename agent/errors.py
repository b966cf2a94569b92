"""The agent's exception family.

Every error that can reach a user carries a one-line message naming what failed and
with which value; CLIs catch `FleetgenError` at the boundary and print that line.
"""

from __future__ import annotations


class FleetgenError(Exception):
    """Base of every error fleetgen raises on purpose.

    `exit_code` is what a CLI exits with when this error ends a command: 2 for unusable
    input (usage, config, a missing file, a model folder that does not load), 1 for
    refusals (a bundle or metadata that fails verification) and operational failures.
    """

    exit_code: int = 1


class UsageError(FleetgenError):
    """A command-line argument or user-supplied value is invalid."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration (file, environment, flags) is invalid; the message names the key."""


class ProtocolError(FleetgenError):
    """A message on the wire does not follow the fleetgen MQTT contract."""
