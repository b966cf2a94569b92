"""`fleetgen-agent hw`: what board this is, what it can accelerate with, and what it draws.

Reads everything through firmware/ relative to `--root` (default `/`), so the same
command describes a fixture tree or a mounted image of another board. The power reading
takes two samples `--interval` apart (energy counters such as RAPL need two).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from agent.errors import FleetgenError, UsageError

log = logging.getLogger(__name__)

SCHEMA = 1


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "hw", parents=[common],
        help="show the board, accelerators, power sensors and modes, and the draw now",
        description="Detect the board and print its accelerators, preferred execution "
                    "providers, power sensors, power modes and a live power reading in watts.",
    )
    p.add_argument("--root", metavar="DIR", default="/",
                   help="read /proc, /sys, /etc and /dev under DIR instead of / (a fixture tree "
                        "or a mounted image)")
    p.add_argument("--json", action="store_true", help="print one JSON document (schema 1)")
    # Parsed in run(), not by argparse, so a bad value is one error line like --root's.
    p.add_argument("--interval", default="0.25", metavar="SECONDS",
                   help="time between the two power samples (default 0.25)")
    p.set_defaults(func=run, log_level="WARNING")  # its output is the answer; INFO lines are noise


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    # An empty --root would quietly mean the current directory.
    if not args.root or not root.is_dir():
        raise UsageError(f"--root {args.root!r}: not a directory")
    try:
        interval = float(args.interval)
    except ValueError:
        interval = math.nan
    if not (math.isfinite(interval) and 0 < interval <= 10):
        raise UsageError(f"--interval must be within (0, 10] seconds, got {args.interval!r}")
    doc = describe(root, interval)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc))
    return 0


def describe(root: Path, interval: float) -> dict[str, Any]:
    """The `--json` document. FirmwareError becomes FleetgenError here, at the boundary."""
    from firmware.detect import detect_board
    from firmware.errors import FirmwareError
    from firmware.knobs import CpuFreq
    from firmware.sensors import open_power_meter
    from firmware.sysfs import SysRoot

    try:
        board = detect_board(root)
        meter = open_power_meter(board)
        meter.prime()
        time.sleep(interval)
        reading = meter.read()
        policies = CpuFreq(SysRoot(root)).policies()
    except FirmwareError as e:
        raise FleetgenError(f"hw: {e}") from e
    ort = board.runtime("onnxruntime")
    available = _available_providers() if ort is not None and ort.installed else None
    p = board.profile
    f = board.facts
    current = board.current_mode
    return {
        "schema": SCHEMA,
        "root": str(root),
        "board": {
            "id": p.id, "name": p.name, "arch": f.arch or p.arch, "cpu_model": f.cpu_model,
            "cores": board.cores, "dt_model": f.dt_model, "l4t": f.tegra_release,
            "idle_w": p.idle_w, "peak_w": p.peak_w,
            "evidence": list(board.evidence), "warnings": list(board.warnings),
        },
        "accelerators": [{"id": a.id, "kind": a.kind, "description": a.description}
                         for a in board.accelerators],
        "fpga_managers": [{"device": m.device, "name": m.name, "state": m.state}
                          for m in f.fpga_managers],
        "dri_nodes": list(f.dri_nodes),
        "runtimes": [{"name": r.name, "installed": r.installed, "version": r.version}
                     for r in board.runtimes],
        "onnx_providers_preferred": list(board.onnx_providers()),
        "onnx_providers": list(board.onnx_providers(available)),
        "onnx_providers_available": available,
        "tflite_delegates": [{"name": d.name, "library": d.library}
                             for d in board.tflite_delegates()],
        "sensors": [{"source": s.source, "description": s.describe(),
                     "primary": s is meter.primary} for s in meter.sensors]
                   + [{"source": "estimate", "description": meter.estimate.describe(),
                       "primary": meter.primary is None}],
        "power": {
            "watts": round(reading.watts, 3), "source": reading.source,
            "estimated": reading.estimated, "interval_s": interval, "detail": reading.detail,
            "rails": [{"name": r.name, "watts": round(r.watts, 3), "volts": r.volts, "amps": r.amps}
                      for r in reading.rails],
        },
        "modes": [{"id": m.id, "name": m.name, "kind": m.kind, "cap_w": m.cap_w, "perf": m.perf,
                   "current": current is not None and m.id == current.id}
                  for m in p.modes_by_power()],
        "jetson_clocks": p.jetson_clocks,
        "cpufreq": [{"policy": c.path.name, "cpus": c.cpus, "governor": c.governor,
                     "max_khz": c.max_khz, "scaling_max_khz": c.scaling_max_khz}
                    for c in policies],
    }


def _available_providers() -> list[str] | None:
    try:
        import onnxruntime
    except (ImportError, OSError) as e:  # OSError: a provider's shared library is broken
        log.warning("cannot import onnxruntime: %s", e)
        return None
    return list(onnxruntime.get_available_providers())


def render(doc: dict[str, Any]) -> str:
    b = doc["board"]
    lines: list[tuple[str, str]] = [("board", f"{b['name']} ({b['id']})")]
    lines += [("", e) for e in b["evidence"]]
    cpu = f"{b['cores']} cores, {b['arch']}"
    if b["cpu_model"]:
        cpu += f", {b['cpu_model']}"
    lines.append(("cpu", cpu))
    if b["l4t"]:
        lines.append(("jetson linux", b["l4t"]))
    accs = doc["accelerators"]
    lines.append(("accelerators", ", ".join(f"{a['id']} ({a['description']})" for a in accs)
                  if accs else "none"))
    for m in doc["fpga_managers"]:
        lines.append(("fpga", f"{m['device']}: {m['name']}, {m['state']}"))
    if doc["dri_nodes"]:
        lines.append(("/dev/dri", " ".join(doc["dri_nodes"])))
    rts = [f"{r['name']} {r['version'] or ''}".strip() for r in doc["runtimes"] if r["installed"]]
    lines.append(("runtimes", ", ".join(rts) or "none installed"))
    lines.append(("onnx providers", ", ".join(doc["onnx_providers_preferred"]) + " (board)"))
    if doc["onnx_providers_available"] is not None:
        lines.append(("", ", ".join(doc["onnx_providers"]) + " (with the onnxruntime here)"))
    if doc["tflite_delegates"]:
        lines.append(("tflite delegates", ", ".join(
            f"{d['name']} ({d['library']})" for d in doc["tflite_delegates"])))
    for s in doc["sensors"]:
        lines.append(("power sensor" if s["primary"] else "also", s["description"]))
    modes = doc["modes"]
    for i, m in enumerate(modes):
        cap = "uncapped" if m["cap_w"] is None else f"cap {m['cap_w']:g} W"
        mark = "  <- current" if m["current"] else ""
        lines.append(("power modes" if i == 0 else "", f"{m['id']} {m['name']} ({m['kind']}, {cap}){mark}"))
    if not modes:
        lines.append(("power modes", "none"))
    for c in doc["cpufreq"]:
        mx = "?" if c["max_khz"] is None else f"{c['max_khz'] / 1000:.0f} MHz"
        lim = "?" if c["scaling_max_khz"] is None else f"{c['scaling_max_khz'] / 1000:.0f} MHz"
        lines.append(("cpufreq", f"{c['policy']} (cpus {c['cpus']}): {c['governor']}, "
                                 f"max {mx}, limit {lim}"))
    pw = doc["power"]
    label = "ESTIMATE" if pw["estimated"] else "measured"
    lines.append(("power now", f"{pw['watts']:.2f} W ({label}, {pw['source']}: {pw['detail'] or 'instant'})"))
    for r in pw["rails"]:
        extra = ""
        if r["volts"] is not None and r["amps"] is not None:
            extra = f" ({r['volts']:.3f} V x {r['amps']:.3f} A)"
        lines.append(("", f"{r['name']}: {r['watts']:.2f} W{extra}"))
    lines += [("warning", w) for w in b["warnings"]]
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)
