"""Board support: detect the board, read power sensors, set power modes, load FPGA overlays,
and the power governor. Depends on nothing else in fleetgen, and only on the stdlib.

The agent's entry points:

    board = detect_board()                        # profile + evidence + accelerators found
    board.onnx_providers(ort.get_available_providers())
    ctl = PowerController(board, PowerSettings(budget_w=12.0))
    ctl.tick()                                    # every settings.tick_s; ctl.runtime has
                                                  # threads, pacing duty, admit
"""

from firmware.control import PowerController, TickReport
from firmware.detect import DetectedBoard, detect_board
from firmware.errors import FirmwareError, ProfileError, SensorError, SettingsError
from firmware.governor import Decision, Governor
from firmware.knobs import FpgaOverlays, RuntimeKnobs
from firmware.profile import BoardProfile, load_profiles
from firmware.sensors import PowerMeter, PowerReading, open_power_meter
from firmware.settings import PowerSettings

__all__ = [
    "BoardProfile", "Decision", "DetectedBoard", "FirmwareError", "FpgaOverlays", "Governor",
    "PowerController", "PowerMeter", "PowerReading", "PowerSettings", "ProfileError",
    "RuntimeKnobs", "SensorError", "SettingsError", "TickReport", "detect_board",
    "load_profiles", "open_power_meter",
]
