"""The agent's view of its board: detected (or forced by config) through firmware/,
turned into what the agent reports and the power meter its telemetry reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.config import BoardSettings
from agent.errors import ConfigError
from firmware.detect import DetectedBoard, detect_board
from firmware.profile import load_profiles
from firmware.sensors import PowerMeter, open_power_meter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Board:
    detected: DetectedBoard
    meter: PowerMeter

    @property
    def id(self) -> str:
        return self.detected.profile.id

    @property
    def accelerators(self) -> list[str]:
        return list(self.detected.accelerator_ids)

    @property
    def providers(self) -> list[str]:
        """Preferred ONNX Runtime providers for what is present (before intersecting with
        what the installed onnxruntime offers, which happens when a model loads)."""
        return list(self.detected.onnx_providers())


def open_board(settings: BoardSettings) -> Board:
    root = Path(settings.root)
    if not root.is_dir():
        raise ConfigError(f"board.root: {settings.root!r} is not a directory")
    profiles = None
    if settings.profile != "auto":
        known = {p.id: p for p in load_profiles()}
        if settings.profile not in known:
            raise ConfigError(
                f"board.profile: unknown profile {settings.profile!r}; known: auto, {', '.join(sorted(known))}"
            )
        # Forcing a profile: detection can only pick it (and logs if the hardware disagrees).
        profiles = [known[settings.profile]]
    detected = detect_board(root, profiles=profiles)
    meter = open_power_meter(detected)
    meter.prime()
    return Board(detected, meter)
