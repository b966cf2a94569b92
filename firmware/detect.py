"""Board detection: read what the hardware says about itself and pick a profile.

Sources, all read relative to a root directory (default `/`) so tests use fixture trees:
/proc/device-tree/model and compatible (NUL-terminated strings), /etc/nv_tegra_release,
/proc/cpuinfo, /sys/class/fpga_manager, /dev/dri, accelerator device nodes named by the
profiles, /etc/nvpmodel.conf (Jetson mode ids), and the Python runtimes installed in this
interpreter (found with importlib.util.find_spec, never imported).

Detection never raises on bad input: an unknown board gets the generic profile for its
architecture, with the reason in `warnings` and in the log.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from firmware.profile import (
    Accelerator,
    BoardProfile,
    PowerMode,
    TfliteDelegate,
    load_profiles,
)
from firmware.sysfs import SysRoot

log = logging.getLogger(__name__)

# Python modules of inference runtimes, and the distributions that may carry them.
RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-vitisai"),
    "tflite_runtime": ("tflite-runtime",),
    "ai_edge_litert": ("ai-edge-litert",),
    "tensorrt": ("tensorrt",),
    "vart": ("vart",),
}

# Arm "CPU part" codes (implementer 0x41) of the cores fleetgen meets.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd4f": "Neoverse-V2", "0xd49": "Neoverse-N2",
}

_TEGRA_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_NVPMODEL_RE = re.compile(r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*([^\s>]+)")
_PMODE_RE = re.compile(r"pmode:\s*(\d+)")
# Where nvpmodel records the mode it last set ("pmode:0002 fmode:quiet").
NVPMODEL_STATUS = "var/lib/nvpmodel/status"

FindSpec = Callable[[str], Any]


@dataclass(frozen=True)
class FpgaManager:
    name: str
    device: str
    state: str


@dataclass(frozen=True)
class BoardFacts:
    """What the hardware files say, before any profile is chosen."""

    arch: str | None
    cpu_model: str | None
    cores: int
    dt_model: str | None
    dt_compatible: tuple[str, ...]
    tegra_release: str | None
    cpuinfo: str
    fpga_managers: tuple[FpgaManager, ...]
    dri_nodes: tuple[str, ...]
    nvpmodel_modes: tuple[tuple[int, str], ...]
    nvpmodel_current: int | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    installed: bool
    version: str | None = None


@dataclass(frozen=True)
class DetectedBoard:
    """The chosen profile, why it was chosen, and what is actually present."""

    profile: BoardProfile
    facts: BoardFacts
    evidence: tuple[str, ...]
    accelerators: tuple[Accelerator, ...]
    runtimes: tuple[RuntimeInfo, ...]
    warnings: tuple[str, ...] = ()
    root: Path = field(default=Path("/"))

    @property
    def accelerator_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.accelerators)

    @property
    def cores(self) -> int:
        return self.facts.cores or self.profile.cores

    @property
    def current_mode(self) -> PowerMode | None:
        if self.facts.nvpmodel_current is None:
            return None
        return self.profile.mode(self.facts.nvpmodel_current)

    def onnx_providers(self, available: Sequence[str] | None = None) -> tuple[str, ...]:
        """Providers to request, best first: the profile's, for accelerators found here."""
        return self.profile.onnx_providers(available, self.accelerator_ids)

    def tflite_delegates(self) -> tuple[TfliteDelegate, ...]:
        return self.profile.tflite_delegates(self.accelerator_ids)

    def runtime(self, name: str) -> RuntimeInfo | None:
        return next((r for r in self.runtimes if r.name == name), None)


def read_facts(root: SysRoot) -> BoardFacts:
    cpuinfo = root.read_text(root.path("proc/cpuinfo")) or ""
    arch, cpu_model, cores = _parse_cpuinfo(cpuinfo)
    dt_model = _dt_string(root, "model")
    compat_raw = _dt_raw(root, "compatible")
    dt_compatible = tuple(s for s in compat_raw.split("\x00") if s) if compat_raw else ()
    problems: list[str] = []
    tegra = root.read_line(root.path("etc/nv_tegra_release"))
    tegra_release = None
    if tegra is not None:
        m = _TEGRA_RE.search(tegra)
        if m:
            tegra_release = f"R{m.group(1)}.{m.group(2)}"
        else:
            problems.append(f"/etc/nv_tegra_release is not in the '# R36 (release), "
                            f"REVISION: x.y' form: {tegra[:80]!r}")
    managers = []
    for d in root.glob("sys/class/fpga_manager/*"):
        managers.append(FpgaManager(
            name=root.read_line(d / "name") or "",
            device=d.name,
            state=root.read_line(d / "state") or "unknown",
        ))
    dri = tuple(p.name for p in root.glob("dev/dri/*"))
    conf = root.read_text(root.path("etc/nvpmodel.conf")) or ""
    nv_modes = tuple((int(i), n) for i, n in _NVPMODEL_RE.findall(conf))
    status = root.read_line(root.path(NVPMODEL_STATUS))
    current = None
    if status:
        current = parse_pmode(status)
        if current is None:
            problems.append(f"/{NVPMODEL_STATUS} has no pmode: {status[:40]!r}")
    return BoardFacts(
        arch=arch, cpu_model=cpu_model, cores=cores, dt_model=dt_model,
        dt_compatible=dt_compatible, tegra_release=tegra_release, cpuinfo=cpuinfo,
        fpga_managers=tuple(managers), dri_nodes=dri, nvpmodel_modes=nv_modes,
        nvpmodel_current=current, problems=tuple(problems),
    )


def detect_board(
    root: Path = Path("/"),
    profiles: Sequence[BoardProfile] | None = None,
    find_spec: FindSpec | None = None,
) -> DetectedBoard:
    """Detect the board under `root`. Never raises for bad hardware files."""
    sysroot = SysRoot(root)
    profiles = tuple(profiles) if profiles is not None else load_profiles()
    facts = read_facts(sysroot)
    warnings: list[str] = list(facts.problems)
    arch = facts.arch
    if arch is None:
        host = _normalise_arch(platform.machine()) if Path(root) == Path("/") else None
        if host:
            arch = host
            warnings.append(f"/proc/cpuinfo does not say the architecture; using the host's ({host})")
        else:
            warnings.append("/proc/cpuinfo is missing or unreadable: architecture unknown")
    chosen: BoardProfile | None = None
    evidence: list[str] = []
    near_misses: list[str] = []
    for profile in sorted(profiles, key=lambda p: -p.priority):
        ok, why, near = _matches(profile, facts, arch)
        if ok:
            chosen, evidence = profile, why
            break
        if near and profile.priority > 0:
            near_misses.append(f"looks like {profile.id} but {near}")
    if chosen is None or chosen.priority == 0:
        # A board that resembles a known one but fails a rule (an older JetPack, say)
        # is worth a line in the log: it explains why it got the generic profile.
        warnings.extend(near_misses)
    if chosen is None:
        fallback = "generic-arm64" if arch == "aarch64" else "generic-x86_64"
        chosen = next((p for p in profiles if p.id == fallback), profiles[0])
        warnings.append(f"no profile matches this board; using {chosen.id}")
        evidence = [f"fallback for architecture {arch or 'unknown'}"]
    chosen = _reconcile_modes(chosen, facts, warnings)
    present = tuple(a for a in chosen.accelerators if _present(sysroot, a))
    runtimes = detect_runtimes(find_spec)
    for w in warnings:
        log.warning("board detection: %s", w)
    log.info("board detected: %s (%s); accelerators: %s", chosen.id, "; ".join(evidence),
             ", ".join(a.id for a in present) or "none")
    return DetectedBoard(
        profile=chosen, facts=facts, evidence=tuple(evidence), accelerators=present,
        runtimes=runtimes, warnings=tuple(warnings), root=Path(root),
    )


def detect_runtimes(find_spec: FindSpec | None = None) -> tuple[RuntimeInfo, ...]:
    """Which inference runtimes this interpreter could import (without importing them)."""
    from importlib import metadata  # only when asked: it costs ~20 ms at import

    spec_of = find_spec or importlib.util.find_spec
    out = []
    for module, dists in RUNTIMES.items():
        try:
            installed = spec_of(module) is not None
        except (ImportError, ValueError) as e:
            log.warning("cannot look up runtime %s: %s", module, e)
            installed = False
        version = None
        if installed:
            for dist in dists:
                try:
                    version = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue
        out.append(RuntimeInfo(module, installed, version))
    return tuple(out)


def parse_pmode(status: str) -> int | None:
    """The mode id in nvpmodel's status file, or None when it has none."""
    m = _PMODE_RE.search(status)
    return int(m.group(1)) if m else None


def _matches(p: BoardProfile, f: BoardFacts, arch: str | None) -> tuple[bool, list[str], str]:
    """(all rules hold, evidence, why not — only when some board-specific rule held)."""
    rules = p.match
    why: list[str] = []
    failed: list[str] = []
    if rules.arch is not None:
        if arch == rules.arch:
            why.append(f"architecture {arch}")
        else:
            failed.append(f"architecture {arch} is not {rules.arch}")
    if rules.dt_model:
        hit = next((s for s in rules.dt_model if f.dt_model and s in f.dt_model), None)
        if hit:
            why.append(f"device-tree model {f.dt_model!r} contains {hit!r}")
        else:
            failed.append(f"device-tree model {f.dt_model!r} has none of {list(rules.dt_model)}")
    if rules.dt_compatible:
        hit = next((c for c in f.dt_compatible for s in rules.dt_compatible if s in c), None)
        if hit:
            why.append(f"device-tree compatible {hit!r}")
        else:
            failed.append(f"device-tree compatible {list(f.dt_compatible)} has none of "
                          f"{list(rules.dt_compatible)}")
    if rules.tegra_release:
        rel = f.tegra_release
        if rel and any(rel.startswith(s + ".") or rel == s for s in rules.tegra_release):
            why.append(f"L4T release {rel}")
        else:
            failed.append(f"L4T release {rel or 'absent'} is not one of {list(rules.tegra_release)}")
    if rules.cpuinfo:
        hit = next((s for s in rules.cpuinfo if s in f.cpuinfo), None)
        if hit:
            why.append(f"/proc/cpuinfo mentions {hit!r}")
        else:
            failed.append(f"/proc/cpuinfo has none of {list(rules.cpuinfo)}")
    specific = [w for w in why if w.startswith(("device-tree", "/proc/cpuinfo"))]
    near = "; ".join(failed) if failed and specific else ""
    return (not failed), why, near


def _present(root: SysRoot, acc: Accelerator) -> bool:
    for rule in acc.detect:
        paths = root.glob(rule.path) if any(c in rule.path for c in "*?[") else (
            [root.path(rule.path)] if root.exists(rule.path) else [])
        for p in paths:
            if rule.contains is None:
                return True
            text = root.read_text(p, 65536)
            if text is not None and rule.contains in text:
                return True
    return False


def _reconcile_modes(p: BoardProfile, f: BoardFacts, warnings: list[str]) -> BoardProfile:
    """nvpmodel mode ids differ between JetPack releases: trust /etc/nvpmodel.conf by name."""
    if not f.nvpmodel_modes or not any(m.kind == "nvpmodel" for m in p.modes):
        return p
    conf = {name: ident for ident, name in f.nvpmodel_modes}
    modes: list[PowerMode] = []
    for m in p.modes:
        if m.kind != "nvpmodel":
            modes.append(m)
        elif m.name in conf:
            if conf[m.name] != m.id:
                warnings.append(f"/etc/nvpmodel.conf gives mode {m.name} id {conf[m.name]} "
                                f"(profile says {m.id}); using {conf[m.name]}")
            modes.append(replace(m, id=conf[m.name]))
        else:
            warnings.append(f"/etc/nvpmodel.conf has no mode {m.name}; not using it")
    unknown = sorted(set(conf) - {m.name for m in p.modes})
    if unknown:
        log.info("nvpmodel modes without a profile entry (not used by the governor): %s", unknown)
    return replace(p, modes=tuple(modes))


def _parse_cpuinfo(text: str) -> tuple[str | None, str | None, int]:
    cores = 0
    model = None
    arch = None
    parts: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            cores += 1
        elif key in ("vendor_id", "flags") and arch is None:
            arch = "x86_64"
        elif key in ("CPU implementer", "Features") and arch is None:
            arch = "aarch64"
        elif key == "model name" and model is None:
            model = value
        elif key == "CPU part":
            parts.append(value.lower())
    if model is None and parts:
        names = sorted({ARM_PARTS.get(x, f"Arm part {x}") for x in parts})
        model = " + ".join(names)
    return arch, model, cores


def _normalise_arch(machine: str) -> str | None:
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64"):
        return "aarch64"
    return None


def _dt_raw(root: SysRoot, name: str) -> str | None:
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        text = root.read_text(root.path(f"{base}/{name}"), 4096)
        if text is not None:
            return text
    return None


def _dt_string(root: SysRoot, name: str) -> str | None:
    raw = _dt_raw(root, name)
    if raw is None:
        return None
    value = raw.split("\x00", 1)[0].strip()
    return value or None
