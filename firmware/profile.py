"""Board profiles: what a board is, how to recognise it, and how to run models on it.

One TOML data file per board under firmware/boards/. `load_profiles()` reads and
validates them into frozen `BoardProfile` objects; a malformed file is a `ProfileError`
naming the file and the key. docs/power.md explains how to add one.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from firmware.errors import ProfileError

log = logging.getLogger(__name__)

BOARDS_DIR = Path(__file__).parent / "boards"
PROFILE_SCHEMA = 1
CPU_PROVIDER = "CPUExecutionProvider"

SensorKind = Literal["rapl", "ina3221", "hwmon"]
ModeKind = Literal["nvpmodel", "cpufreq"]


@dataclass(frozen=True)
class MatchRules:
    """How to recognise the board. Every rule given must hold; within one rule, any value.

    arch: the CPU architecture ("x86_64" or "aarch64"), from /proc/cpuinfo.
    dt_model: substrings of /proc/device-tree/model.
    dt_compatible: substrings of one entry of /proc/device-tree/compatible.
    tegra_release: L4T release prefixes of /etc/nv_tegra_release ("R36").
    cpuinfo: substrings of /proc/cpuinfo.
    """

    arch: str | None = None
    dt_model: tuple[str, ...] = ()
    dt_compatible: tuple[str, ...] = ()
    tegra_release: tuple[str, ...] = ()
    cpuinfo: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetectRule:
    """An accelerator is present when `path` (a glob under the root) exists and, if
    `contains` is set, one matching file contains that text."""

    path: str
    contains: str | None = None


@dataclass(frozen=True)
class TfliteDelegate:
    name: str
    library: str


@dataclass(frozen=True)
class Accelerator:
    id: str
    kind: str
    description: str
    detect: tuple[DetectRule, ...]
    onnx_providers: tuple[str, ...] = ()
    tflite_delegates: tuple[TfliteDelegate, ...] = ()


@dataclass(frozen=True)
class SensorSpec:
    """A power sensor the board may have, in order of preference.

    rapl: /sys/class/powercap/intel-rapl:N energy counters (µJ).
    ina3221: /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/ (mV, mA); `rails` are the
        labels whose sum is the board's draw.
    hwmon: /sys/class/hwmon/hwmon*/ with a `name` in `names`; `attribute` in µW.
    """

    kind: SensorKind
    rails: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    attribute: str = "power1_input"


@dataclass(frozen=True)
class PowerMode:
    """A board power mode: an nvpmodel mode, or a cpufreq ceiling.

    cap_w: the mode's power ceiling in watts; None for uncapped modes (MAXN), which count
        as the board's peak. perf: throughput relative to the fastest mode (clock ratio),
        the governor's prior for choosing between modes.
    """

    id: int
    name: str
    kind: ModeKind
    cap_w: float | None
    perf: float
    max_freq_fraction: float | None = None

    def nominal_w(self, peak_w: float) -> float:
        return self.cap_w if self.cap_w is not None else peak_w


@dataclass(frozen=True)
class BoardProfile:
    """One board: recognition rules, accelerators, sensors, power modes, idle/peak watts."""

    id: str
    name: str
    arch: str
    priority: int
    match: MatchRules
    idle_w: float
    peak_w: float
    per_core_dynamic_w: float
    cores: int
    accelerators: tuple[Accelerator, ...] = ()
    sensors: tuple[SensorSpec, ...] = ()
    modes: tuple[PowerMode, ...] = ()
    jetson_clocks: bool = False
    fpga_overlays: bool = False
    # the cores are the model's (an appliance): ORT's workers spin unless a budget binds
    cores_dedicated: bool = False
    notes: str = ""
    source: Path | None = field(default=None, compare=False)

    def onnx_providers(
        self,
        available: Iterable[str] | None = None,
        present: Iterable[str] | None = None,
    ) -> tuple[str, ...]:
        """ONNX Runtime execution providers to ask for, best first, CPU always last.

        available: what the installed onnxruntime offers (`get_available_providers()`);
            None keeps every preferred provider. present: the accelerator ids detected on
            this device; None assumes all the profile's accelerators are there.
        """
        avail = None if available is None else set(available)
        here = None if present is None else set(present)
        out: list[str] = []
        for acc in self.accelerators:
            if here is not None and acc.id not in here:
                continue
            for p in acc.onnx_providers:
                if p not in out and p != CPU_PROVIDER and (avail is None or p in avail):
                    out.append(p)
        out.append(CPU_PROVIDER)
        return tuple(out)

    def tflite_delegates(self, present: Iterable[str] | None = None) -> tuple[TfliteDelegate, ...]:
        """TFLite delegates to try, best first; none means the built-in CPU (XNNPACK) path."""
        here = None if present is None else set(present)
        out: list[TfliteDelegate] = []
        for acc in self.accelerators:
            if here is None or acc.id in here:
                out.extend(d for d in acc.tflite_delegates if d not in out)
        return tuple(out)

    def mode(self, mode_id: int) -> PowerMode | None:
        return next((m for m in self.modes if m.id == mode_id), None)

    def modes_by_power(self) -> tuple[PowerMode, ...]:
        """Modes from the lowest nominal power to the highest."""
        return tuple(sorted(self.modes, key=lambda m: (m.nominal_w(self.peak_w), m.perf)))


def load_profiles(directory: Path = BOARDS_DIR) -> tuple[BoardProfile, ...]:
    """Every profile in `directory` (`*.toml`), sorted by id. A bad file raises."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProfileError(f"no board profiles (*.toml) in {directory}")
    profiles = tuple(load_profile(p) for p in files)
    seen: set[str] = set()
    for p in profiles:
        if p.id in seen:
            raise ProfileError(f"two board profiles share the id {p.id!r} in {directory}")
        seen.add(p.id)
    return tuple(sorted(profiles, key=lambda p: p.id))


def load_profile(path: Path) -> BoardProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read board profile {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"board profile {path} is not valid TOML: {e}") from e
    try:
        return _parse_profile(data, path)
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f"board profile {path}: {e}") from e


def _parse_profile(d: Mapping[str, Any], path: Path) -> BoardProfile:
    schema = _get(d, "schema", int)
    if schema != PROFILE_SCHEMA:
        raise ValueError(f"schema {schema} is not supported (expected {PROFILE_SCHEMA})")
    idle_w = _get(d, "idle_w", float)
    peak_w = _get(d, "peak_w", float)
    if not 0 < idle_w < peak_w:
        raise ValueError(f"need 0 < idle_w < peak_w, got idle_w={idle_w} peak_w={peak_w}")
    m = d.get("match", {})
    match = MatchRules(
        arch=m.get("arch"),
        dt_model=_strs(m, "dt_model"),
        dt_compatible=_strs(m, "dt_compatible"),
        tegra_release=_strs(m, "tegra_release"),
        cpuinfo=_strs(m, "cpuinfo"),
    )
    accs = tuple(_parse_accelerator(a) for a in d.get("accelerators", []))
    sensors = tuple(_parse_sensor(s) for s in d.get("sensors", []))
    modes = tuple(_parse_mode(x) for x in d.get("modes", []))
    if len({x.id for x in modes}) != len(modes):
        raise ValueError("power mode ids must be unique")
    return BoardProfile(
        id=_get(d, "id", str),
        name=_get(d, "name", str),
        arch=_get(d, "arch", str),
        priority=_get(d, "priority", int),
        match=match,
        idle_w=idle_w,
        peak_w=peak_w,
        per_core_dynamic_w=_get(d, "per_core_dynamic_w", float),
        cores=_get(d, "cores", int),
        accelerators=accs,
        sensors=sensors,
        modes=modes,
        jetson_clocks=bool(d.get("jetson_clocks", False)),
        fpga_overlays=bool(d.get("fpga_overlays", False)),
        cores_dedicated=bool(d.get("cores_dedicated", False)),
        notes=str(d.get("notes", "")),
        source=path,
    )


def _parse_accelerator(a: Mapping[str, Any]) -> Accelerator:
    rules = tuple(DetectRule(path=_get(r, "path", str), contains=r.get("contains")) for r in a["detect"])
    if not rules:
        raise ValueError(f"accelerator {a.get('id')!r} has no detect rules")
    delegates = tuple(
        TfliteDelegate(name=_get(x, "name", str), library=_get(x, "library", str))
        for x in a.get("tflite_delegates", [])
    )
    return Accelerator(
        id=_get(a, "id", str),
        kind=_get(a, "kind", str),
        description=str(a.get("description", "")),
        detect=rules,
        onnx_providers=_strs(a, "onnx_providers"),
        tflite_delegates=delegates,
    )


def _parse_sensor(s: Mapping[str, Any]) -> SensorSpec:
    kind = _get(s, "kind", str)
    if kind not in ("rapl", "ina3221", "hwmon"):
        raise ValueError(f"sensor kind {kind!r} is not one of rapl, ina3221, hwmon")
    if kind == "hwmon" and not s.get("names"):
        raise ValueError("an hwmon sensor needs `names` (the hwmon `name` values to use)")
    return SensorSpec(
        kind=kind,
        rails=_strs(s, "rails"),
        names=_strs(s, "names"),
        attribute=str(s.get("attribute", "power1_input")),
    )


def _parse_mode(x: Mapping[str, Any]) -> PowerMode:
    kind = _get(x, "kind", str)
    if kind not in ("nvpmodel", "cpufreq"):
        raise ValueError(f"power mode kind {kind!r} is not one of nvpmodel, cpufreq")
    cap = x.get("cap_w")
    perf = float(x.get("perf", 1.0))
    if not 0 < perf <= 1:
        raise ValueError(f"power mode {x.get('name')!r}: perf must be in (0, 1], got {perf}")
    frac = x.get("max_freq_fraction")
    if kind == "cpufreq" and frac is None:
        raise ValueError(f"cpufreq power mode {x.get('name')!r} needs max_freq_fraction")
    return PowerMode(
        id=_get(x, "id", int),
        name=_get(x, "name", str),
        kind=kind,
        cap_w=None if cap is None else float(cap),
        perf=perf,
        max_freq_fraction=None if frac is None else float(frac),
    )


def _get(d: Mapping[str, Any], key: str, typ: type) -> Any:
    if key not in d:
        raise KeyError(f"missing key {key!r}")
    value = d[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise TypeError(f"key {key!r} must be {typ.__name__}, got {value!r}")
    return value


def _strs(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key, ())
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"key {key!r} must be a string or a list of strings, got {value!r}")
    return tuple(value)
