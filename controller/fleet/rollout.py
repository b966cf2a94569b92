"""The rollout engine: waves, health gates, timeouts and the decisions they lead to.

Pure (DESIGN §9): `decide(snapshot, now)` looks at one rollout as the store holds it and
returns the one next thing to do; the rollout service carries it out (signs and publishes
director documents, writes the store) and asks again. Because the snapshot is all the
state there is, a controller that restarts (or a replica that takes over) picks up
exactly where the last one stopped.

Waves are cumulative sizes, as in Eclipse hawkBit: `1,10%,50%,100%` means one device
first, then up to 10% of the group, then half, then all. A wave's gate is its own failure
ratio: the rollout advances when every device of the wave has committed, failed or timed
out and at most `max_failure_ratio` of them failed; it halts as soon as more than that
have failed, without waiting for the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from controller.fleet.errors import RolloutSpecError

# Event kinds of the agent's update lifecycle (issue 9; DESIGN §2). `update.installed` is
# what agents before the health-gated lifecycle send once a bundle runs.
COMMITTED_KINDS = frozenset({"update.committed", "update.installed"})
FAILED_KINDS = frozenset({"update.rolled_back", "update.refused", "update.failed"})
TERMINAL_KINDS = COMMITTED_KINDS | FAILED_KINDS

DEFAULT_WAVES = "1,10%,50%,100%"
DEFAULT_MAX_FAILURES = "5%"
DEFAULT_WAVE_TIMEOUT_S = 600.0

_WAVE = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"  # abort asked; the rollback is not sent yet
    COMPLETED = "completed"
    HALTED = "halted"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (RolloutStatus.COMPLETED, RolloutStatus.HALTED, RolloutStatus.ABORTED)


class DeviceResult(StrEnum):
    WAITING = "waiting"  # in a wave not started yet
    PENDING = "pending"  # directed, no outcome yet (offline devices stay here until the timeout)
    COMMITTED = "committed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    ROLLED_BACK = "rolled_back"  # directed back to its previous bundle by the rollout
    REVOKED = "revoked"  # `fleetgen device revoke`: left the rollout; neither committed nor failed

    @property
    def failed(self) -> bool:
        return self in (DeviceResult.FAILED, DeviceResult.TIMED_OUT)


@dataclass(frozen=True, slots=True)
class WaveSize:
    """A cumulative wave size: an absolute count, or a percentage of the group."""

    value: float
    percent: bool

    def count(self, total: int) -> int:
        if not self.percent:
            return min(total, int(self.value))
        return min(total, math.ceil(total * self.value / 100 - 1e-9))

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    waves: tuple[WaveSize, ...]
    max_failure_ratio: float
    wave_timeout_s: float

    def __post_init__(self) -> None:
        if not self.waves:
            raise RolloutSpecError("--waves: at least one wave is needed")
        last = self.waves[-1]
        if not (last.percent and last.value == 100):
            raise RolloutSpecError(f"--waves: the last wave must be 100%, not {last}")
        if not 0 <= self.max_failure_ratio <= 1:
            raise RolloutSpecError(
                f"--max-failures: {self.max_failure_ratio * 100:g}% is outside 0-100%")
        if not self.wave_timeout_s > 0:
            raise RolloutSpecError(f"--wave-timeout: {self.wave_timeout_s:g}s must be positive")


def parse_waves(text: str) -> tuple[WaveSize, ...]:
    """'1,10%,50%,100%' -> wave sizes; refuses empty, zero, shrinking or >100% sizes."""
    waves: list[WaveSize] = []
    for part in (p.strip() for p in text.split(",")):
        m = _WAVE.match(part)
        if not m:
            raise RolloutSpecError(f"--waves: {part!r} is neither a count (5) nor a percentage (10%)")
        value, percent = float(m.group(1)), bool(m.group(2))
        if value <= 0 or (percent and value > 100) or (not percent and value != int(value)):
            raise RolloutSpecError(f"--waves: {part!r} must be a whole count >= 1 or a percentage in (0, 100]")
        waves.append(WaveSize(value, percent))
    if not waves:
        raise RolloutSpecError("--waves: at least one wave is needed")
    percents = [w.value for w in waves if w.percent]
    if percents != sorted(percents):
        raise RolloutSpecError(f"--waves: percentages must not shrink ({text})")
    if not (waves[-1].percent and waves[-1].value == 100):
        raise RolloutSpecError(f"--waves: the last wave must be 100% ({text})")
    return tuple(waves)


def parse_ratio(text: str, what: str = "--max-failures") -> float:
    """'5%' (or '5') -> 0.05; refuses anything outside 0-100%."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise RolloutSpecError(f"{what}: {text!r} is not a percentage like 5%") from None
    if not 0 <= value <= 100 or math.isnan(value):
        raise RolloutSpecError(f"{what}: {text!r} is outside 0-100%")
    return value / 100


def plan_waves(devices: Sequence[str], waves: Sequence[WaveSize]) -> tuple[tuple[str, ...], ...]:
    """Split the (ordered) devices into waves of new devices; waves that add none vanish."""
    total = len(devices)
    planned: list[tuple[str, ...]] = []
    done = 0
    for wave in waves:
        upto = max(done, wave.count(total))
        if upto > done:
            planned.append(tuple(devices[done:upto]))
            done = upto
    if done < total:  # the last wave is 100%, so only rounding can leave some
        planned.append(tuple(devices[done:]))
    return tuple(planned)


def allowed_failures(wave_size: int, max_failure_ratio: float) -> int:
    return math.floor(wave_size * max_failure_ratio + 1e-9)


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """One rollout as the store has it."""

    status: RolloutStatus
    waves: tuple[tuple[str, ...], ...]
    current_wave: int
    wave_started: float | None  # None: the current wave has not been directed yet
    results: Mapping[str, DeviceResult]
    policy: RolloutPolicy


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class StartWave:
    """Direct these devices to the rollout's bundle; the wave's clock starts now."""

    wave: int
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TimeOut:
    """These devices said nothing within the wave timeout: they count as failed."""

    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Halt:
    """The gate failed: stop, and direct the wave's devices back to their previous bundle."""

    wave: int
    rollback: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """The operator aborted: direct every device the rollout reached back, then stop."""

    rollback: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Complete:
    pass


Decision = Wait | StartWave | TimeOut | Halt | Abort | Complete


def decide(snap: RolloutSnapshot, now: float) -> Decision:
    """The one next step of a rollout."""
    if snap.status.finished:
        return Wait(f"rollout {snap.status.value}")
    # A revoked device has left the rollout: it is never directed (nor directed back) again,
    # and a wave's gate counts only the devices still in it.
    gone = (DeviceResult.WAITING, DeviceResult.REVOKED)
    reached = [d for wave in snap.waves[: snap.current_wave + 1] for d in wave
               if snap.results.get(d, DeviceResult.WAITING) not in gone]
    if snap.status is RolloutStatus.ABORTING:
        return Abort(tuple(d for d in reached if snap.results[d] is not DeviceResult.ROLLED_BACK))
    if snap.status is RolloutStatus.PAUSED:
        return Wait("paused")
    if snap.current_wave >= len(snap.waves):
        return Complete()
    wave = _remaining(snap, snap.waves[snap.current_wave])
    if snap.wave_started is None:
        return StartWave(snap.current_wave, wave)
    results = [snap.results.get(d, DeviceResult.PENDING) for d in wave]
    failed = sum(1 for r in results if r.failed)
    allowed = allowed_failures(len(wave), snap.policy.max_failure_ratio)
    if failed > allowed:
        return Halt(snap.current_wave, wave, (
            f"wave {snap.current_wave + 1}: {failed} of {len(wave)} devices failed "
            f"(at most {allowed} allowed at {snap.policy.max_failure_ratio * 100:g}%)"))
    pending = tuple(d for d, r in zip(wave, results, strict=True) if r is DeviceResult.PENDING)
    if pending:
        if now >= snap.wave_started + snap.policy.wave_timeout_s:
            return TimeOut(pending)
        return Wait(f"wave {snap.current_wave + 1}: {len(pending)} of {len(wave)} devices pending")
    if snap.current_wave + 1 < len(snap.waves):
        return StartWave(snap.current_wave + 1, _remaining(snap, snap.waves[snap.current_wave + 1]))
    return Complete()


def _remaining(snap: RolloutSnapshot, wave: tuple[str, ...]) -> tuple[str, ...]:
    """The wave's devices that have not been revoked."""
    return tuple(d for d in wave if snap.results.get(d) is not DeviceResult.REVOKED)


def result_of(kind: str) -> DeviceResult | None:
    """What an event of this kind means for a directed device (None: not an outcome)."""
    if kind in COMMITTED_KINDS:
        return DeviceResult.COMMITTED
    if kind in FAILED_KINDS:
        return DeviceResult.FAILED
    return None
