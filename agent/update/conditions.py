"""When an update may proceed: maintenance window, drain, battery floor, free disk.

`UpdateConditions` comes from agent.toml's `[update]` and may be overridden per device by
the signed desired document's `config` (keys `update.window`, `update.battery_floor_pct`,
`update.disk_reserve_mb`, `update.drain_timeout_s`). `evaluate` is pure: the readings
(local time, battery, free bytes, in-flight requests) are passed in. A window that cannot
be parsed, or a floor out of range, is a `ConditionsError` (the update is refused with
an event, never silently ignored).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import time as dtime
from pathlib import Path

from agent.errors import FleetgenError
from agent.protocol.messages import Scalar

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
MiB = 2**20


class ConditionsError(FleetgenError):
    """Update conditions that cannot hold (a malformed window, a floor out of range)."""

    check = "conditions"


@dataclass(frozen=True)
class Window:
    start: dtime
    end: dtime

    def contains(self, t: dtime) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # across midnight, e.g. 22:00-04:00

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text.strip())
    if m is None:
        raise ConditionsError(f"maintenance window {text!r}: expected HH:MM-HH:MM (device-local time)")
    a, b = dtime(int(m[1]), int(m[2])), dtime(int(m[3]), int(m[4]))
    if a == b:
        raise ConditionsError(f"maintenance window {text!r} is empty (start equals end)")
    return Window(a, b)


@dataclass(frozen=True)
class UpdateConditions:
    window: Window | None = None
    battery_floor_pct: float | None = None
    disk_reserve_mb: float = 256.0
    drain_timeout_s: float = 300.0

    def with_overrides(self, config: Mapping[str, Scalar]) -> UpdateConditions:
        """Overrides from the desired document's `config` (ConditionsError when invalid)."""
        c = self
        if "update.window" in config:
            w = config["update.window"]
            c = replace(c, window=None if w in (None, "") else parse_window(str(w)))
        for key, attr, lo, hi in (("update.battery_floor_pct", "battery_floor_pct", 0, 100),
                                  ("update.disk_reserve_mb", "disk_reserve_mb", 0, 1 << 20),
                                  ("update.drain_timeout_s", "drain_timeout_s", 0, 86400)):
            if key in config:
                v = config[key]
                if v is None and attr == "battery_floor_pct":
                    c = replace(c, battery_floor_pct=None)
                    continue
                if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                    raise ConditionsError(f"{key} = {v!r}: expected a number in {lo}..{hi}")
                if attr == "battery_floor_pct":
                    c = replace(c, battery_floor_pct=float(v))
                elif attr == "disk_reserve_mb":
                    c = replace(c, disk_reserve_mb=float(v))
                else:
                    c = replace(c, drain_timeout_s=float(v))
        return c


@dataclass(frozen=True)
class Readings:
    local_time: dtime
    battery_pct: float | None  # None: no battery (mains powered)
    free_bytes: int
    in_flight: int
    drain_started_s: float | None = None  # monotonic time the drain began
    now_s: float = 0.0
    total_bytes: int | None = None  # the filesystem's size: None when unknown


@dataclass(frozen=True)
class Verdict:
    reason: str
    refuse: bool = False  # True: final (the disk can never hold it as things are); else wait
    check: str = ""  # which condition: window, battery, disk, drain


def evaluate(c: UpdateConditions, r: Readings, need_bytes: int) -> Verdict | None:
    """None when the update may go on; otherwise why it waits, or why it is refused.

    Disk: the download and the unpacked bundle both need room (a bundle is uncompressed,
    so twice its length) plus the reserve. Refused (before any byte is fetched) only when
    the filesystem could not hold that even empty; short of free space now, the update
    waits and rechecks, so it proceeds once space is freed. Drain: wait while generation
    requests are in flight, but no longer than `drain_timeout_s` after the drain began."""
    if c.window is not None and not c.window.contains(r.local_time):
        return Verdict(f"outside the maintenance window {c.window} (device time {r.local_time:%H:%M})",
                       check="window")
    if c.battery_floor_pct is not None and r.battery_pct is not None and r.battery_pct < c.battery_floor_pct:
        return Verdict(f"battery at {r.battery_pct:.0f}%, under the floor of {c.battery_floor_pct:.0f}%",
                       check="battery")
    reserve = int(c.disk_reserve_mb * MiB)
    if r.free_bytes < need_bytes + reserve:
        never = r.total_bytes is not None and r.total_bytes < need_bytes + reserve
        size = f" on a {r.total_bytes // MiB} MiB filesystem" if never and r.total_bytes is not None else ""
        return Verdict(f"not enough free disk: {r.free_bytes // MiB} MiB free{size}, {need_bytes // MiB} MiB "
                       f"needed plus a reserve of {reserve // MiB} MiB", refuse=never, check="disk")
    if r.in_flight > 0:
        started = r.drain_started_s if r.drain_started_s is not None else r.now_s
        if r.now_s - started < c.drain_timeout_s:
            return Verdict(f"draining: {r.in_flight} generation request(s) in flight", check="drain")
    return None


def battery_percent(root: Path) -> float | None:
    """The lowest capacity of the batteries under ROOT/sys/class/power_supply, if any."""
    base = Path(root) / "sys/class/power_supply"
    levels = []
    try:
        supplies = list(base.iterdir())
    except OSError:
        return None
    for s in supplies:
        try:
            if (s / "type").read_text().strip() != "Battery":
                continue
            levels.append(float((s / "capacity").read_text().strip()))
        except (OSError, ValueError):
            continue
    return min(levels) if levels else None


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def total_bytes(path: Path) -> int:
    return shutil.disk_usage(path).total
