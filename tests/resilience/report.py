"""The resilience report: one row per scenario with what was injected and what was lost.

A scenario records into a `ScenarioResult` (the `scenario` fixture hands one out); at the
end of the session the plugin in conftest.py prints the table and, when
FLEETGEN_RESILIENCE_REPORT names a file, writes the JSON there (`make resilience`:
build/resilience.json).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = 1


@dataclass
class ScenarioResult:
    name: str
    seed: int
    runs: int = 0
    faults: int = 0
    samples_sent: int = 0
    samples_stored: int = 0
    samples_duplicated: int = 0
    events_sent: int = 0
    events_stored: int = 0
    installs_old: int = 0
    installs_new: int = 0
    installs_broken: int = 0
    rollouts_done: int = 0
    rollouts_halted: int = 0
    rollouts_stuck: int = 0
    api_ok: int = 0
    api_failed: int = 0
    crashes: int = 0              # daemons that died of something other than our own SIGKILL
    recovery_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: bool | None = None

    @property
    def samples_lost(self) -> int:
        return max(0, self.samples_sent - (self.samples_stored - self.samples_duplicated))

    @property
    def events_lost(self) -> int:
        return max(0, self.events_sent - self.events_stored)

    def recovered(self, seconds: float) -> None:
        self.recovery_s.append(round(seconds, 3))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["samples_lost"] = self.samples_lost
        out["events_lost"] = self.events_lost
        out["recovery_p50_s"] = _p50(self.recovery_s)
        out["recovery_max_s"] = max(self.recovery_s) if self.recovery_s else None
        return out


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


_COLUMNS = [
    ("scenario", 34), ("ok", 4), ("seed", 5), ("runs", 5), ("faults", 6),
    ("samples s/st/lost/dup", 22), ("events s/st/lost", 17), ("installs old/new/brk", 20),
    ("rollouts done/halt/stuck", 24), ("api ok/fail", 12), ("crash", 5), ("recov p50/max s", 16),
]


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _row(r: ScenarioResult) -> list[str]:
    ok = {True: "yes", False: "NO", None: "?"}[r.passed]
    rec = f"{_fmt_s(_p50(r.recovery_s))}/{_fmt_s(max(r.recovery_s) if r.recovery_s else None)}"
    return [r.name, ok, str(r.seed), str(r.runs), str(r.faults),
            f"{r.samples_sent}/{r.samples_stored}/{r.samples_lost}/{r.samples_duplicated}",
            f"{r.events_sent}/{r.events_stored}/{r.events_lost}",
            f"{r.installs_old}/{r.installs_new}/{r.installs_broken}",
            f"{r.rollouts_done}/{r.rollouts_halted}/{r.rollouts_stuck}",
            f"{r.api_ok}/{r.api_failed}", str(r.crashes), rec]


def table(results: list[ScenarioResult]) -> str:
    widths = [max(w, *(len(_row(r)[i]) for r in results)) if results else w
              for i, (_, w) in enumerate(_COLUMNS)]
    lines = ["  ".join(name.ljust(widths[i]) for i, (name, _) in enumerate(_COLUMNS))]
    lines.append("  ".join("-" * w for w in widths))
    for r in results:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(_row(r))))
    totals = totals_of(results)
    lines.append("")
    lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    notes = [f"  {r.name}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["notes:", *notes]
    return "\n".join(lines)


def totals_of(results: list[ScenarioResult]) -> dict[str, int]:
    return {
        "samples_lost": sum(r.samples_lost for r in results),
        "samples_duplicated": sum(r.samples_duplicated for r in results),
        "events_lost": sum(r.events_lost for r in results),
        "installs_broken": sum(r.installs_broken for r in results),
        "rollouts_stuck": sum(r.rollouts_stuck for r in results),
        "crashes": sum(r.crashes for r in results),
        "scenarios_failed": sum(r.passed is False for r in results),
    }


def write_json(results: list[ScenarioResult], path: Path, *, wall_s: float, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "mode": mode, "wall_s": round(wall_s, 1), "totals": totals_of(results),
           "scenarios": [r.as_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")


Sized = Callable[[int, int], int]  # the `size` fixture: size(short, full)
