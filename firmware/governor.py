"""The power governor: pure logic, no I/O, no clock, no sleeping.

Each `step(t, measured_w)` takes the draw measured since the previous step and returns the
knob settings (board power mode, inference threads, pacing duty cycle, admit/queue). The
adapter in firmware/control.py does the reading and the setting around it, like
python-tuf's TrustedMetadataSet and Updater.

How it decides:

* A PI loop (with anti-windup) turns the gap between a setpoint a little under the budget
  and the measured draw into a command: the dynamic power, in watts above idle, that the
  work may use. A feed-forward term (setpoint - idle) makes a budget change act at once;
  the integral absorbs what the board's model gets wrong. If the rolling-window average
  is over budget, the setpoint drops by part of the excess so the window recovers.
* The command becomes knob settings through a ladder of levels (mode x threads), each with
  an estimated full-speed dynamic power and relative throughput from the board profile.
  The level giving the most throughput at the command (throughput x duty) wins; pacing
  (the duty cycle) fills in between levels.
* Cheapest knob first: pacing moves every step; a better thread count must stay better for
  `thread_dwell_s`, a better board mode for `mode_dwell_s`, and a level change must win by
  a margin (hysteresis), so the loop does not flap between neighbours. Only when the
  current level cannot get under the budget even at the lowest pacing does it switch
  at once.
* When even the lowest level at the lowest pacing would exceed the budget (a budget below
  idle, or just above it), it refuses new work (`admit=False`) and says why; it admits
  again once the budget clears that floor by a margin.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from firmware.errors import SettingsError
from firmware.profile import BoardProfile, PowerMode
from firmware.settings import PowerSettings

# Share of a level's dynamic power that does not scale with threads (memory, uncore, GPU).
UNCORE_SHARE = 0.25
# Per-extra-thread contention: speedup(t) = t / (1 + CONTENTION * (t - 1)).
CONTENTION = 0.1
# A better level must beat the current one by this fraction of throughput.
LEVEL_HYSTERESIS = 0.05
# How hard the setpoint drops to pay back a window average over its allowance.
WINDOW_GAIN = 1.0
# Re-admit work only once the budget exceeds the floor by this fraction.
ADMIT_HYSTERESIS = 0.05
# Weight of a new idle measurement in the idle estimate, and the range (relative to the
# profile's idle) it may be learnt within.
IDLE_ALPHA = 0.2
IDLE_RANGE = (0.5, 3.0)
# An unmeasured mode is assumed to draw this much more than the profile says, so a
# switch to it undershoots rather than overshoots the budget.
PRIOR_SCALE = 1.15
# Learning a mode's real draw: time after a level change before trusting the rails, the
# lag assumed between a duty change and the draw, and the weight of one sample.
SETTLE_S = 2.0
SETTLE_TAU_S = 1.0
SCALE_ALPHA = 0.1
LEARN_MIN_DUTY = 0.5
STALE_SCALE = 1.1
MIN_SAMPLES = 4
# A mode's learnt draw is measured above the idle estimate of its time: once that estimate
# has moved by this share of the profile's idle, the mode counts as unmeasured again (and
# may be re-tried), or a mode learnt under a wrong idle would look wrongly dear forever.
IDLE_RELEARN = 0.1
# How much less than the known modes (relative to the profile) an unmeasured mode must
# be assumed to draw for it to be worth a trial.
EXPLORE_OPTIMISM = 0.85
# The integral only corrects model error (idle drift, noise): bounded to this share of
# the largest dynamic power.
INTEGRAL_LIMIT = 0.3


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: a board mode (None on boards without modes) and a thread
    count, with the estimated dynamic power at full duty and relative throughput."""

    mode: PowerMode | None
    threads: int
    dyn_w: float
    perf: float

    @property
    def mode_id(self) -> int | None:
        return None if self.mode is None else self.mode.id


@dataclass(frozen=True)
class Decision:
    """What the governor decided at time `t`, and on what evidence."""

    t: float
    budget_w: float | None
    measured_w: float
    average_w: float
    estimated: bool
    mode_id: int | None
    mode_name: str | None
    threads: int
    duty: float
    admit: bool
    throttled: bool
    reason: str
    changed: tuple[str, ...] = ()

    def knob_details(self) -> dict[str, str | int | float | bool | None]:
        """Flat knob values (the shape of the agent's PowerReport.knobs)."""
        return {
            "mode": self.mode_name, "mode_id": self.mode_id, "threads": self.threads,
            "duty": round(self.duty, 3), "admit": self.admit, "throttled": self.throttled,
        }


def speedup(threads: int) -> float:
    return threads / (1.0 + CONTENTION * (threads - 1))


def build_levels(profile: BoardProfile, cores: int, settings: PowerSettings) -> tuple[Level, ...]:
    """The ladder for a board: every (mode, threads) pair, with estimates from the profile."""
    top_threads = max(1, min(settings.max_threads or cores, cores))
    low_threads = min(settings.min_threads, top_threads)
    modes: Sequence[PowerMode | None] = profile.modes_by_power() or (None,)
    span = profile.peak_w - profile.idle_w
    levels = []
    for mode in modes:
        nominal = profile.peak_w if mode is None else mode.nominal_w(profile.peak_w)
        mode_dyn = max(nominal - profile.idle_w, 0.05 * span)
        mode_perf = 1.0 if mode is None else mode.perf
        for t in range(low_threads, top_threads + 1):
            share = UNCORE_SHARE + (1 - UNCORE_SHARE) * t / top_threads
            levels.append(Level(mode, t, mode_dyn * share,
                                mode_perf * speedup(t) / speedup(top_threads)))
    return tuple(levels)


class Governor:
    """Closed-loop power governor over a ladder of levels. Pure: feed it time and draw."""

    def __init__(self, levels: Sequence[Level], idle_w: float, settings: PowerSettings,
                 start_mode: int | None = None) -> None:
        """`start_mode`: the board power mode in force now, if known. The governor starts
        there (all threads) rather than at the top mode, so taking over a board costs no
        mode switch up and back down: a higher mode must earn its dwell like any other."""
        if not levels:
            raise SettingsError("the governor needs at least one level")
        self.levels = tuple(levels)
        self.settings = settings
        self.budget_w = settings.budget_w
        self.idle_w = idle_w
        self._idle_prior = idle_w
        self._top = max(self.levels, key=lambda lv: (lv.perf, lv.dyn_w))
        self._bottom = min(self.levels, key=lambda lv: (lv.dyn_w, lv.perf))
        here = [lv for lv in self.levels if start_mode is not None and lv.mode_id == start_mode]
        self.level = max(here, key=lambda lv: (lv.perf, lv.dyn_w)) if here else self._top
        self.duty = 1.0
        self.admit = True
        self._integral = 0.0
        self._last_t: float | None = None
        self._window: deque[tuple[float, float, float, float]] = deque()
        self._better_since: float | None = None
        self._last_thread_change = -math.inf
        self._last_mode_change = -math.inf
        self._level_since = -math.inf
        self._duty_lag = 1.0
        self._scale: dict[int | None, float] = {}
        self._samples: dict[int | None, int] = {}
        self._learnt_idle: dict[int | None, float] = {}

    @classmethod
    def for_board(cls, profile: BoardProfile, cores: int, settings: PowerSettings,
                  start_mode: int | None = None) -> Governor:
        return cls(build_levels(profile, cores, settings), profile.idle_w, settings, start_mode)

    def set_budget(self, budget_w: float | None) -> None:
        if budget_w is not None and not (math.isfinite(budget_w) and budget_w > 0):
            raise SettingsError(f"budget must be a positive number of watts, got {budget_w!r}")
        self.budget_w = budget_w

    @property
    def floor_w(self) -> float:
        """The least the board can draw while still doing work."""
        return self.idle_w + self.dyn_hat(self._bottom) * self.settings.min_duty

    def average_w(self) -> float:
        total = sum(x[2] for x in self._window)
        if total <= 0:
            return 0.0
        return sum(x[1] * x[2] for x in self._window) / total

    def step(self, t: float, measured_w: float, estimated: bool = False,
             busy: bool = True) -> Decision:
        """One control step. `measured_w`: the average draw since the last step; `busy`:
        whether the runtime had work (an idle runtime's draw teaches the idle estimate)."""
        if not math.isfinite(measured_w) or measured_w < 0:
            measured_w = self._window[-1][1] if self._window else self.idle_w
        dt = self.settings.tick_s if self._last_t is None else max(t - self._last_t, 0.0)
        self._last_t = t
        self._record(t, measured_w, dt)
        before = (self.level, self.admit)
        if not busy or not self.admit:
            # Learn the idle draw, within reason: a sensor glitch must not convince the
            # governor that the board idles at 0 W (or at 50 W).
            learnt = self.idle_w + IDLE_ALPHA * (measured_w - self.idle_w)
            self.idle_w = min(max(learnt, IDLE_RANGE[0] * self._idle_prior),
                              IDLE_RANGE[1] * self._idle_prior)
        if self.budget_w is None:
            self.level, self.duty, self.admit, self._integral = self._top, 1.0, True, 0.0
            return self._decide(t, measured_w, estimated, before, "no budget: full speed")
        return self._govern(t, dt, measured_w, estimated, busy, before)

    def _govern(self, t: float, dt: float, measured: float, estimated: bool, busy: bool,
                before: tuple[Level, bool]) -> Decision:
        s = self.settings
        budget = self.budget_w
        assert budget is not None
        if busy and self.admit:
            self._learn(t, dt, measured)
        setpoint = budget * (1 - s.margin)
        avg = self.average_w()
        allowed = self._window_budget()
        if self._window_span() >= s.window_s / 2 and avg > allowed:
            # Pay back the window's excess over what its budgets allowed (energy spent under
            # an earlier, higher budget is not a debt), so its average comes back under.
            setpoint -= WINDOW_GAIN * (avg - allowed)
        error = setpoint - measured if busy and self.admit else 0.0
        feed = setpoint - self.idle_w
        w_max = max(self.dyn_hat(lv) for lv in self.levels)
        command = min(max(feed + s.kp * error + self._integral, 0.0), w_max)
        # Levels are chosen on the steady-state allowance; the proportional kick of a
        # sudden change only moves the pacing.
        steady = min(max(feed + self._integral, 0.0), w_max)

        if budget < self.floor_w or (not self.admit and budget < self.floor_w * (1 + ADMIT_HYSTERESIS)):
            self.level, self.duty, self.admit = self._bottom, s.min_duty, False
            self._integral = 0.0
            if budget < self.idle_w:
                why = f"budget {budget:.2f} W is below the board's idle draw {self.idle_w:.2f} W"
            else:
                why = (f"budget {budget:.2f} W is below the lowest working draw "
                       f"{self.floor_w:.2f} W")
            return self._decide(t, measured, estimated, before, f"queueing work: {why}")
        if steady <= 0.0 and self._window_span() >= s.window_s and avg > allowed * (1 + s.tolerance):
            # The PI wants less than nothing and the window is still over budget: the
            # board idles higher than its profile says. Learn that; the floor check above
            # then queues work until the budget allows it.
            self.idle_w = min(max(self.idle_w, avg - self.dyn_hat(self._bottom) * s.min_duty),
                              IDLE_RANGE[1] * self._idle_prior)
        self.admit = True
        self.level = self._choose(t, steady)
        raw = command / self.dyn_hat(self.level)
        self.duty = min(max(raw, s.min_duty), 1.0)
        # Anti-windup: while the duty cycle is pinned, integrate only back toward zero (a
        # correction learnt on another level must not stick), never further out.
        step = s.ki * error * dt
        if raw >= 1.0 and error > 0:
            step = min(step, max(-self._integral, 0.0))
        elif raw <= s.min_duty and error < 0:
            step = max(step, min(-self._integral, 0.0))
        limit = INTEGRAL_LIMIT * w_max
        self._integral = min(max(self._integral + step, -limit), limit)
        if self.duty >= 1.0 and self.level is self._top:
            why = "within budget at full speed"
        else:
            why = f"throttled to {self.duty:.0%} pacing, {self.level.threads} threads"
            if self.level.mode is not None:
                why += f", mode {self.level.mode.name}"
        return self._decide(t, measured, estimated, before, why)

    def dyn_hat(self, lv: Level) -> float:
        """The level's dynamic power at full duty: the profile's estimate times what this
        board has shown for that mode. Pessimistic for modes not measured, and a little
        for modes not in use (their measurement may be stale)."""
        if not self.known(lv.mode_id):
            return lv.dyn_w * max(self._scale.get(lv.mode_id, 0.0), PRIOR_SCALE)
        scale = self._scale[lv.mode_id]
        return lv.dyn_w * (scale if lv.mode_id == self.level.mode_id else scale * STALE_SCALE)

    def _learn(self, t: float, dt: float, measured: float) -> None:
        # The rails lag the knobs: compare the draw with a lagged duty, and only once the
        # level has settled.
        a = 1 - math.exp(-dt / SETTLE_TAU_S) if dt > 0 else 1.0
        self._duty_lag += a * (self.duty - self._duty_lag)
        # At low duty an error in the idle estimate swamps the dynamic part: learn only
        # from samples where the work dominates.
        if t - self._level_since < SETTLE_S or self._duty_lag < LEARN_MIN_DUTY:
            return
        sample = (measured - self.idle_w) / (self._duty_lag * self.level.dyn_w)
        sample = min(max(sample, 0.3), 3.0)
        key = self.level.mode_id
        n = self._samples.get(key, 0)
        old = self._scale.get(key, sample)
        new = old + (SCALE_ALPHA if n >= MIN_SAMPLES else 0.3) * (sample - old)
        self._scale[key] = new
        self._samples[key] = n + 1
        self._learnt_idle[key] = self.idle_w

    def known(self, mode_id: int | None) -> bool:
        if self._samples.get(mode_id, 0) < MIN_SAMPLES:
            return False
        drift = abs(self._learnt_idle[mode_id] - self.idle_w)
        return drift <= IDLE_RELEARN * self._idle_prior

    def _choose(self, t: float, command: float) -> Level:
        s = self.settings
        cur = self.level

        def feasible(lv: Level) -> bool:
            return command >= self.dyn_hat(lv) * s.min_duty

        def score(lv: Level) -> float:
            return lv.perf * min(1.0, command / self.dyn_hat(lv))

        same_mode = [lv for lv in self.levels if lv.mode_id == cur.mode_id and feasible(lv)]
        anywhere = [lv for lv in self.levels if feasible(lv)] if s.allow_mode_changes else same_mode
        if not feasible(cur):
            # Safety: the current level cannot get under budget; move now, threads first.
            pool = same_mode or anywhere or [self._bottom]
            return self._switch(t, max(pool, key=score))
        best = max(anywhere or [cur], key=score)
        if s.allow_mode_changes and self.known(cur.mode_id):
            # Try an unmeasured mode when, drawing what the known modes do relative to the
            # profile, it would beat the best known level. Its duty starts pessimistic.
            seen = [v for k, v in self._scale.items() if self.known(k)]
            optimistic = (min(seen) if seen else 1.0) * EXPLORE_OPTIMISM
            trial = [lv for lv in self.levels if not self.known(lv.mode_id)
                     and command >= lv.dyn_w * optimistic * s.min_duty]
            if trial:
                def hopeful(lv: Level) -> float:
                    return lv.perf * min(1.0, command / (lv.dyn_w * optimistic))
                pick = max(trial, key=hopeful)
                if hopeful(pick) > max(score(best), score(cur)) * (1 + LEVEL_HYSTERESIS):
                    best = pick
        exploring = best is not cur and not self.known(best.mode_id)
        if not exploring and score(best) <= score(cur) * (1 + LEVEL_HYSTERESIS):
            self._better_since = None
            return cur
        if self._better_since is None:
            self._better_since = t
        waited = t - self._better_since
        if best.mode_id != cur.mode_id and waited >= s.mode_dwell_s and \
                t - self._last_mode_change >= s.mode_dwell_s:
            return self._switch(t, best)
        local = max(same_mode or [cur], key=score)
        if local is not cur and score(local) > score(cur) * (1 + LEVEL_HYSTERESIS) and \
                waited >= s.thread_dwell_s and t - self._last_thread_change >= s.thread_dwell_s:
            return self._switch(t, local)
        return cur

    def _switch(self, t: float, new: Level) -> Level:
        if new is not self.level:
            self._level_since = t
        if new.mode_id != self.level.mode_id:
            self._last_mode_change = t
        if new.threads != self.level.threads:
            self._last_thread_change = t
        self._better_since = None
        return new

    def _window_budget(self) -> float:
        """The time-weighted budget over the window (what its average is allowed)."""
        total = sum(x[2] for x in self._window)
        if total <= 0:
            return math.inf
        return sum(x[3] * x[2] for x in self._window) / total

    def _record(self, t: float, w: float, dt: float) -> None:
        self._window.append((t, w, dt, math.inf if self.budget_w is None else self.budget_w))
        while self._window and self._window[0][0] <= t - self.settings.window_s:
            self._window.popleft()

    def _window_span(self) -> float:
        return sum(x[2] for x in self._window)

    def _decide(self, t: float, measured: float, estimated: bool,
                before: tuple[Level, bool], reason: str) -> Decision:
        lv = self.level
        changed = []
        if lv.mode_id != before[0].mode_id:
            changed.append("mode")
        if lv.threads != before[0].threads:
            changed.append("threads")
        if self.admit != before[1]:
            changed.append("admit")
        return Decision(
            t=t, budget_w=self.budget_w, measured_w=measured, average_w=self.average_w(),
            estimated=estimated, mode_id=lv.mode_id,
            mode_name=None if lv.mode is None else lv.mode.name, threads=lv.threads,
            duty=self.duty, admit=self.admit,
            throttled=not self.admit or self.duty < 1.0 or lv is not self._top,
            reason=reason, changed=tuple(changed),
        )

