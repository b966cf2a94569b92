"""The firmware package's exception family.

firmware/ depends on nothing else in fleetgen, so it has its own base class; the agent
converts `FirmwareError` into its own `FleetgenError` at the boundary (agent/cli/hw.py).
Every message names the failing path or value.
"""

from __future__ import annotations


class FirmwareError(Exception):
    """Base of every error the firmware package raises on purpose."""


class ProfileError(FirmwareError):
    """A board profile data file is missing, unreadable or malformed."""


class SensorError(FirmwareError):
    """A power sensor cannot be read, or gave a value that makes no sense."""


class SettingsError(FirmwareError, ValueError):
    """A power setting (budget, window, thread limits) is out of range."""
