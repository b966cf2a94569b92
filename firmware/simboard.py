"""A simulated board whose power and throughput respond to the knobs, with lag and noise.

It drives the governor tests and the power benchmark (and can stand in for real hardware
in a demo). Its physics are deliberately *not* the governor's model: dynamic power goes
as the cube-ish of the clock, threads contend for memory, the mode switch takes a moment,
power follows a first-order lag, and the sensor has gaussian noise. Deterministic for a
given seed. Time is simulated: `advance(dt)` returns at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware.governor import Governor
from firmware.profile import BoardProfile, MatchRules, PowerMode


@dataclass(frozen=True)
class SimMode:
    id: int
    name: str
    freq: float          # clock relative to the fastest mode
    cap_w: float | None  # what the profile will claim (the governor's prior)


@dataclass(frozen=True)
class SimBoardSpec:
    """An Orin-Nano-like board by default: 4 modes, 6 cores, ~5 W idle, ~24 W peak."""

    idle_w: float = 5.0
    cores: int = 6
    core_w: float = 2.6              # one busy core at freq 1.0
    uncore_w: float = 3.2            # memory/GPU/uncore at freq 1.0, when busy
    freq_exponent: float = 2.6       # dynamic power ~ f^exponent (voltage scales with f)
    contention: float = 0.12         # speedup(t) = t / (1 + contention * (t - 1))
    tokens_per_s: float = 6.0        # one thread at freq 1.0
    tau_s: float = 0.4               # first-order lag of the draw behind the knobs (DVFS, rails)
    sensor_tau_s: float = 1.0        # the sensor's own averaging (INA3221 ~1.1 s window)
    mode_switch_s: float = 0.4       # a mode change takes effect after this
    noise: float = 0.03              # sensor noise, fraction of the reading (1 sigma)
    modes: tuple[SimMode, ...] = (
        SimMode(3, "7W", 0.34, 7.0),
        SimMode(0, "15W", 0.70, 15.0),
        SimMode(1, "25W", 0.92, 25.0),
        SimMode(2, "MAXN_SUPER", 1.0, None),
    )

    def dynamic_w(self, mode: SimMode, threads: int, load: float = 1.0) -> float:
        f = mode.freq
        return load * (threads * self.core_w * f ** self.freq_exponent + self.uncore_w * f)

    def throughput(self, mode: SimMode, threads: int) -> float:
        return self.tokens_per_s * mode.freq * threads / (1 + self.contention * (threads - 1))

    def best_static(self, budget_w: float) -> tuple[float, str]:
        """The highest steady tokens/s of any fixed (mode, threads, pacing duty) whose
        steady draw stays within `budget_w`, searched with the true physics: the reference
        the governor is measured against. Returns (tokens/s, the setting)."""
        best, label = 0.0, "none"
        for mode in self.modes:
            for threads in range(1, self.cores + 1):
                duty = min(1.0, max(0.0, (budget_w - self.idle_w) / self.dynamic_w(mode, threads)))
                tps = duty * self.throughput(mode, threads)
                if tps > best:
                    best, label = tps, f"{mode.name}, {threads} threads, duty {duty:.2f}"
        return best, label

    @property
    def peak_w(self) -> float:
        return self.idle_w + self.dynamic_w(self.modes[-1], self.cores)

    def profile(self, error: float = 0.15) -> BoardProfile:
        """The profile the governor gets: idle and peak off by `error`, mode perf from the
        clock ratio, caps as the spec claims. The governor never sees the physics."""
        modes = tuple(PowerMode(m.id, m.name, "nvpmodel", m.cap_w, m.freq) for m in self.modes)
        return BoardProfile(
            id="simulated", name="Simulated board", arch="aarch64", priority=0,
            match=MatchRules(), idle_w=self.idle_w * (1 - error),
            peak_w=self.peak_w * (1 + error), per_core_dynamic_w=self.core_w,
            cores=self.cores, modes=modes,
        )


@dataclass
class SimBoard:
    spec: SimBoardSpec = field(default_factory=SimBoardSpec)
    seed: int = 0
    load: float = 1.0        # multiplies dynamic power (a heavier model, a prefill burst)
    busy: bool = True        # whether there is work to do at all

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.t = 0.0
        self.mode = self.spec.modes[-1]
        self._pending: tuple[float, SimMode] | None = None
        self.threads = self.spec.cores
        self.duty = 1.0
        self.admit = True
        self.power_w = self.spec.idle_w
        self._sensed_w = self.spec.idle_w
        self.tokens = 0.0
        self.energy_j = 0.0
        self.last_true_w = self.power_w

    def set_mode(self, mode_id: int) -> None:
        mode = next(m for m in self.spec.modes if m.id == mode_id)
        if mode != self.mode:
            self._pending = (self.t + self.spec.mode_switch_s, mode)

    def set_knobs(self, threads: int, duty: float, admit: bool) -> None:
        self.threads = max(1, min(threads, self.spec.cores))
        self.duty = min(max(duty, 0.0), 1.0)
        self.admit = admit

    def target_w(self) -> float:
        working = self.busy and self.admit
        dyn = self.spec.dynamic_w(self.mode, self.threads, self.load) if working else 0.0
        return self.spec.idle_w + self.duty * dyn

    def advance(self, dt: float, substep: float = 0.05) -> tuple[float, float]:
        """Run for `dt` seconds; returns (the sensor's reading: its lagged view of the draw
        with noise, tokens produced). `last_true_w` is the real mean draw over `dt`."""
        steps = max(1, round(dt / substep))
        h = dt / steps
        energy = 0.0
        sensed = 0.0
        tokens = 0.0
        for _ in range(steps):
            if self._pending and self.t >= self._pending[0]:
                self.mode, self._pending = self._pending[1], None
            target = self.target_w()
            self.power_w += (target - self.power_w) * (1 - math.exp(-h / self.spec.tau_s))
            self._sensed_w += (self.power_w - self._sensed_w) * (1 - math.exp(-h / self.spec.sensor_tau_s))
            energy += self.power_w * h
            sensed += self._sensed_w * h
            if self.busy and self.admit:
                tokens += self.duty * self.spec.throughput(self.mode, self.threads) * h
            self.t += h
        self.energy_j += energy
        self.tokens += tokens
        self.last_true_w = energy / dt
        reading = sensed / dt * (1 + self._rng.gauss(0.0, self.spec.noise))
        return max(0.0, reading), tokens


@dataclass(frozen=True)
class TraceRow:
    t: float
    budget_w: float | None
    true_w: float
    measured_w: float
    tokens: float
    mode: str | None
    threads: int
    duty: float
    admit: bool


@dataclass(frozen=True)
class WindowCheck:
    windows: int
    within: int
    worst_ratio: float

    @property
    def fraction(self) -> float:
        return self.within / self.windows if self.windows else 1.0


def run_closed_loop(
    board: SimBoard,
    governor: Governor,
    duration_s: float,
    budget_at: Callable[[float], float | None],
    load_at: Callable[[float], float] = lambda t: 1.0,
    tick_s: float = 0.5,
) -> list[TraceRow]:
    """Drive `governor` on `board` for `duration_s` of simulated time."""
    rows = []
    t = 0.0
    while t < duration_s - 1e-9:
        budget = budget_at(t)
        if budget != governor.budget_w:
            governor.set_budget(budget)
        board.load = load_at(t)
        measured, tokens = board.advance(tick_s)
        t = round(t + tick_s, 9)
        d = governor.step(t, measured, busy=board.busy)
        if d.mode_id is not None:
            board.set_mode(d.mode_id)
        board.set_knobs(d.threads, d.duty, d.admit)
        rows.append(TraceRow(t, budget, board.last_true_w, measured, tokens, d.mode_name,
                             d.threads, d.duty, d.admit))
    return rows


def check_windows(rows: list[TraceRow], window_s: float, tolerance: float,
                  skip_s: float = 0.0) -> WindowCheck:
    """Every full window (one per tick) whose average true draw is within the energy the
    budget allowed over that window (budget x time, summed) times (1 + tolerance)."""
    if len(rows) < 2:
        return WindowCheck(0, 0, 0.0)
    dt = rows[1].t - rows[0].t
    n = max(1, round(window_s / dt))
    windows = within = 0
    worst = 0.0
    for i in range(n - 1, len(rows)):
        span = rows[i - n + 1 : i + 1]
        if span[0].t - dt < skip_s or any(r.budget_w is None for r in span):
            continue
        used = sum(r.true_w for r in span)
        allowed = sum(r.budget_w for r in span if r.budget_w is not None)
        ratio = used / allowed
        windows += 1
        within += ratio <= 1 + tolerance
        worst = max(worst, ratio)
    return WindowCheck(windows, within, worst)
