"""The governor's adapter: read the meter, step the governor, set the knobs that changed.

The agent daemon builds one `PowerController` and calls `tick()` every
`settings.tick_s` (or runs `run()` in a thread). The inference runtime reads
`controller.runtime` (threads, pacing, admit) between decode steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from firmware.detect import DetectedBoard
from firmware.governor import Decision, Governor, build_levels
from firmware.knobs import BoardModes, KnobResult, RuntimeKnobs
from firmware.runner import CommandRunner
from firmware.sensors import PowerMeter, open_power_meter
from firmware.settings import PowerSettings
from firmware.sysfs import SysRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    decision: Decision
    knob_results: tuple[KnobResult, ...]


class PowerController:
    """Meter -> Governor -> knobs. Mode changes that fail are reported, and the governor
    stops proposing modes (the board keeps its mode; pacing and threads still work).

    `change_board_modes`: whether to run nvpmodel / write cpufreq limits. By default only
    when the board was detected at `/`: a board read from a fixture tree or a mounted
    image (the demo's simulated devices) must not have its files rewritten.
    """

    def __init__(self, board: DetectedBoard, settings: PowerSettings,
                 meter: PowerMeter | None = None, runner: CommandRunner | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 busy: Callable[[], bool] = lambda: True,
                 change_board_modes: bool | None = None) -> None:
        self.board = board
        self.settings = settings
        self.clock = clock
        self.busy = busy
        self.meter = meter or open_power_meter(board, clock=clock)
        self.modes = BoardModes(runner or CommandRunner(), SysRoot(board.root))
        if change_board_modes is None:
            change_board_modes = board.root == Path("/")
        self._modes_work = settings.allow_mode_changes and change_board_modes
        # The mode in force (nvpmodel's status) is where the governor starts, already applied.
        current = board.current_mode if self._modes_work else None
        self._applied_mode: int | None = None if current is None else current.id
        self.governor = Governor.for_board(board.profile, board.cores, settings,
                                           self._applied_mode)
        self.runtime = RuntimeKnobs(self.governor.level.threads)
        self.last: Decision | None = None
        if not self._modes_work:
            self._drop_modes()
        self.meter.prime()

    def set_budget(self, budget_w: float | None) -> None:
        self.governor.set_budget(budget_w)
        log.info("power budget set to %s", "unlimited" if budget_w is None else f"{budget_w:.2f} W")

    def tick(self) -> TickReport:
        reading = self.meter.read()
        d = self.governor.step(reading.t, reading.watts, reading.estimated, self.busy())
        results: list[KnobResult] = []
        self.runtime.set(d.threads, d.duty, d.admit)
        level = self.governor.level
        if self._modes_work and level.mode is not None and level.mode.id != self._applied_mode:
            r = self.modes.apply(level.mode)
            results.append(r)
            if r.ok:
                self._applied_mode = level.mode.id
            else:
                log.warning("cannot set power mode %s (%s); governing with threads and pacing "
                            "only", level.mode.name, r.explanation)
                self._modes_work = False
                self._drop_modes()
        if d.changed:
            log.info("power: %s (draw %.2f W%s, budget %s)", d.reason, d.measured_w,
                     " estimated" if d.estimated else "",
                     "none" if d.budget_w is None else f"{d.budget_w:.2f} W")
        self.last = d
        return TickReport(d, tuple(results))

    def _drop_modes(self) -> None:
        """Govern without board modes: a ladder of thread counts at the board's peak."""
        old = self.governor
        profile = replace(self.board.profile, modes=())
        self.governor = Governor(build_levels(profile, self.board.cores, self.settings),
                                 old.idle_w, replace(self.settings, allow_mode_changes=False))
        self.governor.set_budget(old.budget_w)

    def run(self, stop: threading.Event) -> None:
        """Tick every `tick_s` until `stop` is set. Never raises for sensor or knob trouble."""
        while not stop.wait(self.settings.tick_s):
            self.tick()


