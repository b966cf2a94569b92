"""fleetgen controller: signing, rollouts, registry, telemetry, power, web."""

from agent import __version__

__all__ = ["__version__"]
