"""Update conditions, pure: window (across midnight too), battery floor from a sysfs tree,
drain with a deadline, free disk (a wait, or a refusal when it can never fit), overrides from the desired document."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from agent.update.conditions import (
    ConditionsError,
    Readings,
    UpdateConditions,
    battery_percent,
    evaluate,
    parse_window,
)

GiB = 2**30


def readings(at: time = time(3, 0), battery: float | None = None, free: int = 10 * GiB, in_flight: int = 0,
             drain_started: float | None = None, now: float = 100.0) -> Readings:
    return Readings(at, battery, free, in_flight, drain_started, now)


def test_windows_including_across_midnight() -> None:
    night = parse_window("22:00-04:00")
    assert night.contains(time(23, 59)) and night.contains(time(0, 0)) and night.contains(time(3, 59))
    assert not night.contains(time(4, 0)) and not night.contains(time(12, 0))
    day = parse_window("02:00-04:00")
    assert day.contains(time(2, 0)) and not day.contains(time(4, 0)) and not day.contains(time(1, 59))


@pytest.mark.parametrize("bad", ["25:00-26:00", "2-4", "02:00-02:00", "02:60-03:00", ""])
def test_impossible_windows_are_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(ConditionsError, match="window"):
        parse_window(bad)


def test_each_condition_says_why_it_waits_or_refuses() -> None:
    c = UpdateConditions(window=parse_window("02:00-04:00"), battery_floor_pct=30, disk_reserve_mb=100,
                         drain_timeout_s=60)
    assert evaluate(c, readings(), 1 * GiB) is None
    v = evaluate(c, readings(at=time(12, 0)), GiB)
    assert v is not None and not v.refuse and "maintenance window 02:00-04:00" in v.reason and "12:00" in v.reason
    v = evaluate(c, readings(battery=12), GiB)
    assert v is not None and not v.refuse and "battery at 12%" in v.reason
    assert evaluate(c, readings(battery=None), GiB) is None  # mains powered: no floor applies
    v = evaluate(c, readings(free=GiB), GiB)  # short of space now: wait (and recheck)
    assert v is not None and not v.refuse and v.check == "disk" and "free disk" in v.reason
    v = evaluate(c, Readings(time(3, 0), 80, GiB, 0, total_bytes=GiB), GiB)  # could never fit: refused
    assert v is not None and v.refuse and v.check == "disk" and "1024 MiB filesystem" in v.reason
    v = evaluate(c, readings(in_flight=2, drain_started=90.0, now=100.0), GiB)
    assert v is not None and "draining: 2" in v.reason
    assert evaluate(c, readings(in_flight=2, drain_started=30.0, now=100.0), GiB) is None  # drain deadline


def test_overrides_from_the_desired_document() -> None:
    c = UpdateConditions().with_overrides({"update.window": "01:00-02:00", "update.battery_floor_pct": 50})
    assert str(c.window) == "01:00-02:00" and c.battery_floor_pct == 50.0
    assert UpdateConditions(window=parse_window("01:00-02:00")).with_overrides({"update.window": ""}).window is None
    with pytest.raises(ConditionsError, match=r"update\.battery_floor_pct"):
        UpdateConditions().with_overrides({"update.battery_floor_pct": 150})
    with pytest.raises(ConditionsError, match=r"update\.disk_reserve_mb"):
        UpdateConditions().with_overrides({"update.disk_reserve_mb": "lots"})


def test_battery_is_read_from_power_supply_where_the_board_has_one(tmp_path: Path) -> None:
    assert battery_percent(tmp_path) is None
    base = tmp_path / "sys/class/power_supply"
    for name, kind, cap in (("AC", "Mains", None), ("BAT0", "Battery", "83"), ("BAT1", "Battery", "41")):
        (base / name).mkdir(parents=True)
        (base / name / "type").write_text(kind + "\n")
        if cap is not None:
            (base / name / "capacity").write_text(cap + "\n")
    assert battery_percent(tmp_path) == 41.0


def test_the_download_policy_comes_from_agent_toml(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text('device_id = "d1"\n[update]\ndownload_window = 4\ndownload_initial_window = 1\n'
                    "download_min_bytes_per_s = 1000\ndownload_floor_window_s = 60\n"
                    "download_request_timeout_s = 20\n")
    policy = load_config(path, env={}).update.download_policy()
    assert (policy.window, policy.initial_window, policy.min_bytes_per_s, policy.grace_s,
            policy.request_timeout_s) == (4, 1, 1000, 60, 20)
    path.write_text('device_id = "d1"\n[update]\ndownload_chunk_bytes = 1048576\n')
    with pytest.raises(ConfigError, match=r"update\.download_chunk_bytes"):
        load_config(path, env={})
