"""The power knobs: Jetson nvpmodel and jetson_clocks, cpufreq governor and ceiling,
inference thread count and pacing, and FPGA overlays (xmutil / fpgautil).

Board-level knobs go through `CommandRunner` (external tools) or write sysfs files under
the root directory (so tests use fixture trees). Any failure is a `KnobResult` saying
why, never an exception: a device without root keeps running, just without that knob.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from firmware.detect import NVPMODEL_STATUS, parse_pmode
from firmware.profile import PowerMode
from firmware.runner import CommandRunner, Outcome
from firmware.sysfs import SysRoot

log = logging.getLogger(__name__)

_NV_MODE_RE = re.compile(r"NV Power Mode:\s*(\S+)")


@dataclass(frozen=True)
class KnobResult:
    knob: str
    value: str
    outcome: Outcome
    explanation: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


# --- Jetson -----------------------------------------------------------------------------


class Nvpmodel:
    """`nvpmodel -q` / `nvpmodel -m ID`; the current mode also from /var/lib/nvpmodel/status."""

    def __init__(self, runner: CommandRunner, root: SysRoot) -> None:
        self.runner = runner
        self.root = root

    def current(self) -> tuple[int | None, str | None]:
        r = self.runner.run(["nvpmodel", "-q"])
        if r.ok:
            lines = [x.strip() for x in r.stdout.splitlines() if x.strip()]
            m = _NV_MODE_RE.search(r.stdout)
            ident = next((int(x) for x in lines if x.isdigit()), None)
            return ident, m.group(1) if m else None
        status = self.root.read_line(self.root.path(NVPMODEL_STATUS))
        return parse_pmode(status or ""), None

    def set_mode(self, mode_id: int) -> KnobResult:
        r = self.runner.run(["nvpmodel", "-m", str(mode_id)], timeout_s=30.0, privileged=True)
        return KnobResult("nvpmodel", str(mode_id), r.outcome, r.explanation)


class JetsonClocks:
    """`jetson_clocks` pins clocks at the mode's maximum; `--restore` undoes it (from the
    state saved with `--store` before the first change)."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self._stored = False

    def set(self, on: bool) -> KnobResult:
        if on and not self._stored:
            stored = self.runner.run(["jetson_clocks", "--store"], privileged=True)
            if not stored.ok:
                return KnobResult("jetson_clocks", "on", stored.outcome, stored.explanation)
            self._stored = True
        argv = ["jetson_clocks"] if on else ["jetson_clocks", "--restore"]
        r = self.runner.run(argv, privileged=True)
        return KnobResult("jetson_clocks", "on" if on else "off", r.outcome, r.explanation)


# --- cpufreq ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CpufreqPolicy:
    path: Path
    cpus: str
    governor: str | None
    governors: tuple[str, ...]
    min_khz: int | None
    max_khz: int | None
    scaling_max_khz: int | None
    frequencies: tuple[int, ...]


class CpuFreq:
    """/sys/devices/system/cpu/cpufreq/policy*/: governor and scaling_max_freq (kHz)."""

    def __init__(self, root: SysRoot) -> None:
        self.root = root

    def policies(self) -> tuple[CpufreqPolicy, ...]:
        out = []
        for d in self.root.glob("sys/devices/system/cpu/cpufreq/policy*"):
            r = self.root
            freqs = (r.read_line(d / "scaling_available_frequencies") or "").split()
            out.append(CpufreqPolicy(
                path=d,
                cpus=r.read_line(d / "related_cpus") or r.read_line(d / "affected_cpus") or "",
                governor=r.read_line(d / "scaling_governor"),
                governors=tuple((r.read_line(d / "scaling_available_governors") or "").split()),
                min_khz=r.read_int(d / "cpuinfo_min_freq"),
                max_khz=r.read_int(d / "cpuinfo_max_freq"),
                scaling_max_khz=r.read_int(d / "scaling_max_freq"),
                frequencies=tuple(sorted(int(f) for f in freqs if f.isdigit())),
            ))
        return tuple(out)

    def set_governor(self, governor: str) -> KnobResult:
        results = []
        for p in self.policies():
            if p.governors and governor not in p.governors:
                return KnobResult("cpufreq_governor", governor, "failed",
                                  f"{p.path.name} offers {list(p.governors)}, not {governor!r}")
            results.append(self._write(p.path / "scaling_governor", governor, "cpufreq_governor"))
        return _combine("cpufreq_governor", governor, results)

    def set_max_fraction(self, fraction: float) -> KnobResult:
        """Cap every policy at `fraction` of its hardware maximum (snapped to a frequency the
        policy offers, never below its minimum)."""
        results = []
        for p in self.policies():
            if p.max_khz is None:
                results.append(KnobResult("cpufreq_max", f"{fraction:.2f}", "failed",
                                          f"{p.path.name} has no readable cpuinfo_max_freq"))
                continue
            target = int(p.max_khz * fraction)
            if p.frequencies:
                # Snap down to an offered frequency (0.5 % slack absorbs rounded fractions).
                below = [f for f in p.frequencies if f <= target * 1.005]
                target = below[-1] if below else p.frequencies[0]
            target = max(target, p.min_khz or 0)
            results.append(self._write(p.path / "scaling_max_freq", str(target), "cpufreq_max"))
        return _combine("cpufreq_max", f"{fraction:.2f}", results)

    def _write(self, path: Path, value: str, knob: str) -> KnobResult:
        try:
            with open(path, "w") as f:
                f.write(value)
        except PermissionError as e:
            return KnobResult(knob, value, "denied", f"not allowed to write {self.root.rel(path)}: {e}")
        except OSError as e:
            return KnobResult(knob, value, "failed", f"cannot write {self.root.rel(path)}: {e}")
        log.info("set %s = %s", self.root.rel(path), value)
        return KnobResult(knob, value, "ok")


def _combine(knob: str, value: str, results: list[KnobResult]) -> KnobResult:
    if not results:
        return KnobResult(knob, value, "missing", "no cpufreq policies on this system")
    bad = [r for r in results if not r.ok]
    if bad:
        return KnobResult(knob, value, bad[0].outcome, bad[0].explanation)
    return KnobResult(knob, value, "ok")


class BoardModes:
    """Applies a profile `PowerMode`, whatever tool that mode needs."""

    def __init__(self, runner: CommandRunner, root: SysRoot) -> None:
        self.nvpmodel = Nvpmodel(runner, root)
        self.cpufreq = CpuFreq(root)

    def apply(self, mode: PowerMode) -> KnobResult:
        if mode.kind == "nvpmodel":
            return self.nvpmodel.set_mode(mode.id)
        assert mode.max_freq_fraction is not None  # the profile loader guarantees it
        return self.cpufreq.set_max_fraction(mode.max_freq_fraction)


# --- in-process knobs the inference runtime reads -----------------------------------------


class RuntimeKnobs:
    """Thread count, pacing and admission, set by the governor and read by the runtime.

    Pacing is a duty cycle: after a decode step that took `t` seconds the runtime sleeps
    `t * (1 - duty) / duty`, so it decodes `duty` of the time. Thread count changes take
    effect when the runtime next builds a session (ONNX Runtime fixes intra-op threads
    at session creation).
    """

    def __init__(self, threads: int, duty: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._threads = threads
        self._duty = duty
        self._admit = True

    def set(self, threads: int, duty: float, admit: bool) -> None:
        with self._lock:
            self._threads, self._duty, self._admit = threads, duty, admit

    @property
    def threads(self) -> int:
        with self._lock:
            return self._threads

    @property
    def duty(self) -> float:
        with self._lock:
            return self._duty

    @property
    def admit(self) -> bool:
        """False while even the lowest setting exceeds the budget: queue new work."""
        with self._lock:
            return self._admit

    def pace_delay(self, step_s: float) -> float:
        """Seconds to sleep after a decode step that took `step_s`."""
        duty = self.duty
        if duty >= 1.0 or step_s <= 0:
            return 0.0
        return step_s * (1.0 - duty) / duty


# --- FPGA overlays (Kria) -----------------------------------------------------------------


@dataclass(frozen=True)
class FpgaApp:
    name: str
    accel_type: str
    active: bool


class FpgaOverlays:
    """Loads the programmable-logic design a bundle carries.

    Kria Ubuntu/PetaLinux: `xmutil listapps|unloadapp|loadapp NAME` (dfx-mgr, apps under
    /lib/firmware/xilinx/NAME). Without xmutil: `fpgautil -b BITSTREAM -o OVERLAY.dtbo`,
    and `fpgautil -R` to remove it.
    """

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def list_apps(self) -> tuple[tuple[FpgaApp, ...], KnobResult]:
        r = self.runner.run(["xmutil", "listapps"], timeout_s=30.0, privileged=True)
        if not r.ok:
            return (), KnobResult("fpga_overlay", "listapps", r.outcome, r.explanation)
        return parse_listapps(r.stdout), KnobResult("fpga_overlay", "listapps", "ok")

    def load_app(self, name: str) -> KnobResult:
        apps, listed = self.list_apps()
        if not listed.ok:
            return KnobResult("fpga_overlay", name, listed.outcome, listed.explanation)
        if not any(a.name == name for a in apps):
            return KnobResult("fpga_overlay", name, "failed",
                              f"xmutil does not know the app {name!r} (has "
                              f"{[a.name for a in apps]}); install it under /lib/firmware/xilinx/")
        if any(a.name == name and a.active for a in apps):
            return KnobResult("fpga_overlay", name, "ok", "already loaded")
        if any(a.active for a in apps):
            un = self.runner.run(["xmutil", "unloadapp"], timeout_s=60.0, privileged=True)
            if not un.ok:
                return KnobResult("fpga_overlay", name, un.outcome, un.explanation)
        r = self.runner.run(["xmutil", "loadapp", name], timeout_s=120.0, privileged=True)
        return KnobResult("fpga_overlay", name, r.outcome, r.explanation)

    def load_bitstream(self, bitstream: Path, overlay: Path) -> KnobResult:
        r = self.runner.run(["fpgautil", "-b", str(bitstream), "-o", str(overlay)],
                            timeout_s=120.0, privileged=True)
        return KnobResult("fpga_overlay", bitstream.name, r.outcome, r.explanation)

    def remove_overlay(self) -> KnobResult:
        r = self.runner.run(["fpgautil", "-R"], timeout_s=60.0, privileged=True)
        return KnobResult("fpga_overlay", "remove", r.outcome, r.explanation)


def parse_listapps(text: str) -> tuple[FpgaApp, ...]:
    """Rows of `xmutil listapps`: NAME TYPE BASE BASE_TYPE (PL+AIE) ACTIVE_SLOT, where the
    active slot is "-1" for an app that is not loaded ("0," for one that is)."""
    apps = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 6 or cols[0] == "Accelerator" or not cols[4].startswith("("):
            continue
        slot = cols[5].rstrip(",")
        apps.append(FpgaApp(cols[0], cols[1], slot.isdigit()))
    return tuple(apps)
