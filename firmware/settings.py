"""Typed power settings with safe defaults.

The agent maps its own configuration onto `PowerSettings`; nothing here reads files or
the environment. Every bound is checked at construction, so a settings object that
exists is a valid one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware.errors import SettingsError


@dataclass(frozen=True)
class PowerSettings:
    """How the governor keeps a device within its power budget.

    budget_w: the device's budget in watts; None means unlimited (no throttling).
    window_s: the rolling window the budget applies to (the average over it must stay
        at or under the budget).
    tick_s: how often the governor loop samples the sensor and decides.
    tolerance: the fraction over budget a window average may reach before it counts as a
        violation (what tests and reports use; the governor aims below the budget).
    margin: how far under the budget the controller aims, as a fraction of the budget.
    min_threads / max_threads: the inference thread range the governor may use
        (max_threads None: the number of CPU cores).
    min_duty: the lowest pacing duty cycle (fraction of time spent decoding) before the
        governor queues work instead.
    thread_dwell_s / mode_dwell_s: the least time between two thread-count changes and
        between two board power-mode changes (mode changes are slow and disruptive).
    allow_mode_changes: whether the governor may change the board power mode at all.
    kp / ki: proportional gain (W per W) and integral gain (1/s) of the PI loop.
    """

    budget_w: float | None = None
    window_s: float = 10.0
    tick_s: float = 1.0
    tolerance: float = 0.05
    margin: float = 0.03
    min_threads: int = 1
    max_threads: int | None = None
    min_duty: float = 0.05
    thread_dwell_s: float = 5.0
    mode_dwell_s: float = 15.0
    allow_mode_changes: bool = True
    kp: float = 0.3
    ki: float = 0.35

    def __post_init__(self) -> None:
        if self.budget_w is not None and not (math.isfinite(self.budget_w) and self.budget_w > 0):
            raise SettingsError(f"budget_w must be a positive number of watts, got {self.budget_w!r}")
        _check_range("window_s", self.window_s, 1.0, 3600.0)
        _check_range("tick_s", self.tick_s, 0.05, 60.0)
        if self.tick_s > self.window_s:
            raise SettingsError(f"tick_s {self.tick_s} must not exceed window_s {self.window_s}")
        _check_range("tolerance", self.tolerance, 0.0, 1.0)
        _check_range("margin", self.margin, 0.0, 0.5)
        _check_range("min_duty", self.min_duty, 0.01, 1.0)
        _check_range("thread_dwell_s", self.thread_dwell_s, 0.0, 3600.0)
        _check_range("mode_dwell_s", self.mode_dwell_s, 0.0, 3600.0)
        _check_range("kp", self.kp, 0.0, 10.0)
        _check_range("ki", self.ki, 0.0, 10.0)
        if self.min_threads < 1:
            raise SettingsError(f"min_threads must be at least 1, got {self.min_threads}")
        if self.max_threads is not None and self.max_threads < self.min_threads:
            raise SettingsError(
                f"max_threads {self.max_threads} is below min_threads {self.min_threads}"
            )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise SettingsError(f"{name} must be within [{low}, {high}], got {value!r}")
