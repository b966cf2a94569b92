"""Power sensors: RAPL energy counters, Jetson INA3221 rails, generic hwmon, and an estimate.

Units as the kernel gives them: RAPL `energy_uj` in µJ (a counter that wraps at
`max_energy_range_uj`), INA3221 `inN_input` in mV and `currN_input` in mA, hwmon
`powerN_input` / `powerN_average` in µW. Readings come out in watts.

Sensors never raise while running: a sample that cannot be read (missing file,
permission, garbage, a counter that went backwards) is `None`, explained once in the log,
and `PowerMeter` then answers with the estimate, labelled `estimated=True`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from firmware.detect import DetectedBoard
from firmware.profile import SensorSpec
from firmware.sysfs import SysRoot

log = logging.getLogger(__name__)

# No board fleetgen runs on draws this much: a larger reading is garbage (and a wrapped
# RAPL delta implying more is a counter reset, not a wrap).
MAX_PLAUSIBLE_W = 5000.0
RAPL_PERMISSION_HINT = (
    "energy_uj is readable by root only (Linux 5.10+, CVE-2020-8694); let the agent's group "
    "read it (docs/power.md) or the draw will be estimated"
)


@dataclass(frozen=True)
class RailReading:
    name: str
    watts: float
    volts: float | None = None
    amps: float | None = None


@dataclass(frozen=True)
class PowerReading:
    """One power sample. `estimated` is True when no sensor measured it."""

    watts: float
    source: str
    estimated: bool
    t: float
    rails: tuple[RailReading, ...] = ()
    detail: str = ""


class PowerSensor(Protocol):
    source: str
    estimated: bool

    def describe(self) -> str: ...

    def read(self, now: float) -> PowerReading | None: ...


# --- RAPL -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str
    max_range_uj: int | None


class RaplSensor:
    """Average power between two reads of the RAPL energy counters, wrap-around aware.

    The first read only primes the counters (returns None): energy needs two samples.
    """

    source = "rapl"
    estimated = False

    def __init__(self, root: SysRoot, zones: Sequence[RaplZone]) -> None:
        self.root = root
        self.zones = tuple(zones)
        self._last: tuple[float, tuple[int, ...]] | None = None

    def describe(self) -> str:
        names = ", ".join(f"{z.name} ({z.path.name})" for z in self.zones)
        return f"RAPL energy counters: {names}"

    def read(self, now: float) -> PowerReading | None:
        energies: list[int] = []
        for z in self.zones:
            e = self.root.read_int(z.path / "energy_uj")
            if e is not None and (e < 0 or (z.max_range_uj is not None and e > z.max_range_uj)):
                self.root.warn_once(z.path, "out-of-range", "RAPL counter %s reads %d, outside "
                                    "[0, %s]; sample dropped", self.root.rel(z.path), e,
                                    z.max_range_uj)
                e = None
            if e is None:
                self._last = None
                return None
            energies.append(e)
        current = (now, tuple(energies))
        last, self._last = self._last, current
        if last is None:
            return None
        dt = now - last[0]
        if dt <= 0:
            return None
        rails = []
        for z, e0, e1 in zip(self.zones, last[1], energies, strict=True):
            delta = e1 - e0
            if delta < 0:
                if z.max_range_uj is None:
                    self.root.warn_once(z.path, "backwards", "RAPL counter %s went backwards "
                                        "(%d -> %d) and its range is unknown; sample dropped",
                                        self.root.rel(z.path), e0, e1)
                    return None
                delta += z.max_range_uj
                if delta / dt / 1e6 > MAX_PLAUSIBLE_W:
                    self.root.warn_once(z.path, "backwards", "RAPL counter %s went backwards "
                                        "(%d -> %d), not a wrap; sample dropped",
                                        self.root.rel(z.path), e0, e1)
                    return None
                log.debug("RAPL counter %s wrapped (%d -> %d)", z.path.name, e0, e1)
            rails.append(RailReading(z.name, delta / dt / 1e6))
        total = sum(r.watts for r in rails)
        return PowerReading(total, self.source, False, now, tuple(rails),
                            f"energy over {dt:.3f} s")


def open_rapl(root: SysRoot) -> RaplSensor | None:
    """The zones that make up the machine's draw: psys if the platform has it (it covers
    the whole SoC and more), else every package plus DRAM."""
    zones: list[RaplZone] = []
    for d in root.glob("sys/class/powercap/intel-rapl:*"):
        name = root.read_line(d / "name")
        if name is None:
            continue
        top = d.name.count(":") == 1
        if (top and (name.startswith("package") or name == "psys")) or name == "dram":
            range_uj = root.read_int(d / "max_energy_range_uj")
            if range_uj is not None and range_uj <= 0:
                # Without a range a wrap cannot be told from a reset: such samples are dropped.
                log.warning("RAPL zone %s has max_energy_range_uj %d; wrap-around not handled",
                            root.rel(d), range_uj)
                range_uj = None
            zones.append(RaplZone(d, name, range_uj))
    if not zones:
        return None
    psys = [z for z in zones if z.name == "psys"]
    zones = psys or zones
    for z in zones:
        if root.read_int(z.path / "energy_uj") is None:
            log.warning("RAPL zone %s is not readable: %s", root.rel(z.path), RAPL_PERMISSION_HINT)
            return None
    return RaplSensor(root, zones)


# --- INA3221 (Jetson) -------------------------------------------------------------------


@dataclass(frozen=True)
class InaChannel:
    hwmon: Path
    index: int
    label: str


class Ina3221Sensor:
    """Jetson module rails from the INA3221 hwmon driver (JetPack 5/6 layout).

    `total` names the rails whose sum is the board's draw; every labelled rail is reported.
    """

    source = "ina3221"
    estimated = False

    def __init__(self, root: SysRoot, channels: Sequence[InaChannel], total: Sequence[str]) -> None:
        self.root = root
        self.channels = tuple(channels)
        self.total = tuple(total)

    def describe(self) -> str:
        devs = sorted({f"{c.hwmon.parent.parent.name}/{c.hwmon.name}" for c in self.channels})
        rails = ", ".join(c.label for c in self.channels)
        return f"INA3221 {' '.join(devs)}: {rails} (draw = {' + '.join(self.total)})"

    def read(self, now: float) -> PowerReading | None:
        rails: list[RailReading] = []
        for c in self.channels:
            mv = self.root.read_int(c.hwmon / f"in{c.index}_input")
            ma = self.root.read_int(c.hwmon / f"curr{c.index}_input")
            if mv is None or ma is None:
                if c.label in self.total:
                    return None
                continue
            # A rail near zero can read a few mA below zero; it draws nothing.
            watts = max(mv, 0) * max(ma, 0) / 1e6
            rails.append(RailReading(c.label, watts, mv / 1000, ma / 1000))
        total = sum(r.watts for r in rails if r.name in self.total)
        return PowerReading(total, self.source, False, now, tuple(rails))


def open_ina3221(root: SysRoot, spec: SensorSpec) -> Ina3221Sensor | None:
    channels: list[InaChannel] = []
    for hw in root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"):
        for label_file in sorted(hw.glob("in*_label")):
            m = re.fullmatch(r"in(\d+)_label", label_file.name)
            label = root.read_line(label_file)
            if not m or not label or label.upper() == "NC" or "sum of" in label.lower():
                continue
            channels.append(InaChannel(hw, int(m.group(1)), label))
    if not channels:
        return None
    labels = {c.label for c in channels}
    total = [r for r in spec.rails if r in labels]
    missing = [r for r in spec.rails if r not in labels]
    if missing:
        log.warning("INA3221 rails %s not found (have %s)", missing, sorted(labels))
    if not total:
        log.warning("none of the INA3221 rails %s exist; not using INA3221", list(spec.rails))
        return None
    return Ina3221Sensor(root, channels, total)


# --- generic hwmon ----------------------------------------------------------------------


@dataclass(frozen=True)
class HwmonDevice:
    path: Path
    name: str


class HwmonPowerSensor:
    """hwmon devices whose `name` is in the profile's list, `attribute` in µW, summed."""

    source = "hwmon"
    estimated = False

    def __init__(self, root: SysRoot, devices: Sequence[HwmonDevice], attribute: str) -> None:
        self.root = root
        self.devices = tuple(devices)
        self.attribute = attribute

    def describe(self) -> str:
        devs = ", ".join(f"{d.name} ({d.path.name}/{self.attribute})" for d in self.devices)
        return f"hwmon power: {devs}"

    def read(self, now: float) -> PowerReading | None:
        rails = []
        for d in self.devices:
            uw = self.root.read_int(d.path / self.attribute)
            if uw is None or uw < 0:
                return None
            index = self.attribute[len("power"):].split("_")[0]
            mv = self.root.read_int(d.path / f"in{index}_input") if index.isdigit() else None
            ma = self.root.read_int(d.path / f"curr{index}_input") if index.isdigit() else None
            rails.append(RailReading(d.name, uw / 1e6, None if mv is None else mv / 1000,
                                     None if ma is None else ma / 1000))
        return PowerReading(sum(r.watts for r in rails), self.source, False, now, tuple(rails))


def open_hwmon(root: SysRoot, spec: SensorSpec) -> HwmonPowerSensor | None:
    devices = []
    for hw in root.glob("sys/class/hwmon/hwmon*"):
        name = root.read_line(hw / "name")
        if name in spec.names and (hw / spec.attribute).exists():
            devices.append(HwmonDevice(hw, name))
    return HwmonPowerSensor(root, devices, spec.attribute) if devices else None


# --- estimate ---------------------------------------------------------------------------


def estimate_watts(idle_w: float, per_core_w: float, cores: int, utilisation: float) -> float:
    """The calibrated estimate: idle + per-core dynamic power x cores x utilisation (0..1)."""
    u = min(max(utilisation, 0.0), 1.0)
    return idle_w + per_core_w * cores * u


class ProcStatUtilisation:
    """CPU utilisation (0..1) from /proc/stat: since boot at first, then between reads."""

    def __init__(self, root: SysRoot) -> None:
        self.root = root
        self._last: tuple[int, int] | None = None
        self._value = 0.0

    def __call__(self) -> float:
        line = next(self.root.iter_lines(self.root.path("proc/stat")), "")
        fields = line.split()
        if len(fields) < 5 or fields[0] != "cpu":
            self.root.warn_once("proc/stat", "garbage", "/proc/stat has no aggregate cpu line")
            return self._value
        try:
            values = [int(x) for x in fields[1:9]]
        except ValueError:
            self.root.warn_once("proc/stat", "garbage", "/proc/stat cpu line is garbage: %r", line)
            return self._value
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values)
        if self._last is None:
            busy, span = total - idle, total
        else:
            busy, span = (total - idle) - (self._last[1] - self._last[0]), total - self._last[1]
        self._last = (idle, total)
        if span > 0:
            self._value = min(max(busy / span, 0.0), 1.0)
        return self._value


class EstimateSensor:
    """Idle + per-core dynamic x utilisation; always labelled estimated."""

    source = "estimate"
    estimated = True

    def __init__(self, idle_w: float, per_core_w: float, cores: int,
                 utilisation: Callable[[], float]) -> None:
        self.idle_w = idle_w
        self.per_core_w = per_core_w
        self.cores = cores
        self.utilisation = utilisation

    def describe(self) -> str:
        return (f"estimate: {self.idle_w:g} W idle + {self.cores} cores x "
                f"{self.per_core_w:g} W x utilisation")

    def read(self, now: float) -> PowerReading:
        u = self.utilisation()
        w = estimate_watts(self.idle_w, self.per_core_w, self.cores, u)
        return PowerReading(w, self.source, True, now, (),
                            f"{u:.0%} CPU busy, {self.cores} cores")


# --- the meter ---------------------------------------------------------------------------


class PowerMeter:
    """The board's draw: the first working sensor, or the estimate when it cannot answer."""

    def __init__(self, sensors: Sequence[PowerSensor], estimate: EstimateSensor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sensors = tuple(sensors)
        self.estimate = estimate
        self.clock = clock
        self.primary: PowerSensor | None = self.sensors[0] if self.sensors else None
        self._failures = 0
        self._implausible_said = False

    @property
    def estimated(self) -> bool:
        return self.primary is None

    def prime(self) -> None:
        """Take a first sample so counters (RAPL energy, /proc/stat for the estimate)
        answer for the interval up to the next read."""
        now = self.clock()
        if self.primary is not None:
            self.primary.read(now)
        else:
            self.estimate.read(now)

    def read(self) -> PowerReading:
        now = self.clock()
        if self.primary is not None:
            r = self.primary.read(now)
            if r is not None and not (math.isfinite(r.watts) and 0 <= r.watts <= MAX_PLAUSIBLE_W):
                # A value that parses but cannot be a board's draw (a garbage register, a
                # wrong unit): the governor must not act on it.
                level = logging.DEBUG if self._implausible_said else logging.WARNING
                self._implausible_said = True
                log.log(level, "power sensor %s reads %r W, not a plausible draw; sample dropped",
                        self.primary.source, r.watts)
                r = None
            if r is not None:
                if self._failures >= 3:
                    log.info("power sensor %s answers again", self.primary.source)
                self._failures = 0
                return r
            self._failures += 1
            if self._failures == 3:
                log.warning("power sensor %s failed 3 reads in a row; estimating meanwhile",
                            self.primary.source)
            est = self.estimate.read(now)
            return PowerReading(est.watts, est.source, True, now, (),
                                f"{self.primary.source} gave no sample; {est.detail}")
        return self.estimate.read(now)


def open_power_meter(board: DetectedBoard, utilisation: Callable[[], float] | None = None,
                     clock: Callable[[], float] = time.monotonic) -> PowerMeter:
    """The meter for a detected board: its profile's sensors in order, then the estimate."""
    root = SysRoot(board.root)
    sensors: list[PowerSensor] = []
    for spec in board.profile.sensors:
        sensor: PowerSensor | None
        if spec.kind == "rapl":
            sensor = open_rapl(root)
        elif spec.kind == "ina3221":
            sensor = open_ina3221(root, spec)
        else:
            sensor = open_hwmon(root, spec)
        if sensor is not None:
            sensors.append(sensor)
    p = board.profile
    est = EstimateSensor(p.idle_w, p.per_core_dynamic_w, board.cores,
                         utilisation or ProcStatUtilisation(root))
    if not sensors:
        log.info("no power sensor on %s: the draw is an estimate", p.id)
    return PowerMeter(sensors, est, clock)
