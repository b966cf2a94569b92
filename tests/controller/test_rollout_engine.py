"""The pure rollout engine: wave planning, gates, timeouts, pause and abort."""

from __future__ import annotations

import pytest

from controller.fleet.errors import RolloutSpecError
from controller.fleet.rollout import (
    Abort,
    Complete,
    DeviceResult,
    Halt,
    RolloutPolicy,
    RolloutSnapshot,
    RolloutStatus,
    StartWave,
    TimeOut,
    Wait,
    decide,
    parse_ratio,
    parse_waves,
    plan_waves,
    result_of,
)

R = DeviceResult
DEVICES = [f"d{i:02d}" for i in range(50)]


def policy(waves: str = "1,10%,50%,100%", ratio: float = 0.05, timeout: float = 60.0) -> RolloutPolicy:
    return RolloutPolicy(parse_waves(waves), ratio, timeout)


def snap(waves, current=0, started=None, results=None, status=RolloutStatus.RUNNING, pol=None):
    return RolloutSnapshot(status, waves, current, started, results or {}, pol or policy())


def test_waves_are_cumulative_and_cover_every_device_once() -> None:
    waves = plan_waves(DEVICES, parse_waves("1,10%,50%,100%"))
    assert [len(w) for w in waves] == [1, 4, 20, 25]
    assert [d for w in waves for d in w] == DEVICES


def test_waves_that_add_nobody_vanish() -> None:
    assert [len(w) for w in plan_waves(DEVICES[:3], parse_waves("1,10%,50%,100%"))] == [1, 1, 1]
    assert [len(w) for w in plan_waves(DEVICES[:1], parse_waves("1,10%,50%,100%"))] == [1]
    assert [len(w) for w in plan_waves(DEVICES[:7], parse_waves("100%"))] == [7]


@pytest.mark.parametrize("text, problem", [
    ("1,10%,50%", "last wave must be 100%"),
    ("", "neither a count"),
    ("0,100%", "whole count"),
    ("1,150%", "percentage in (0, 100]"),
    ("50%,10%,100%", "must not shrink"),
    ("ten,100%", "neither a count"),
    ("1.5,100%", "whole count"),
])
def test_bad_waves_are_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(RolloutSpecError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        parse_waves(text)


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0", 0.0), ("100%", 1.0), ("12.5", 0.125)])
def test_ratios(text: str, value: float) -> None:
    assert parse_ratio(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1%", "101%", "five", "nan"])
def test_bad_ratios_are_refused(text: str) -> None:
    with pytest.raises(RolloutSpecError, match="--max-failures"):
        parse_ratio(text)


def test_policy_refuses_bad_values() -> None:
    with pytest.raises(RolloutSpecError, match="outside 0-100%"):
        RolloutPolicy(parse_waves("100%"), 1.5, 10)
    with pytest.raises(RolloutSpecError, match="positive"):
        RolloutPolicy(parse_waves("100%"), 0.1, 0)


def test_a_healthy_rollout_walks_every_wave_then_completes() -> None:
    waves = plan_waves(DEVICES, parse_waves("1,10%,50%,100%"))
    results: dict[str, DeviceResult] = {}
    s = snap(waves)
    steps = []
    for _ in range(20):
        d = decide(s, now=100.0)
        steps.append(type(d).__name__)
        if isinstance(d, Complete):
            break
        assert isinstance(d, StartWave)
        assert d.devices == waves[d.wave]
        # The wave was directed; nothing back yet: wait.
        results.update({x: R.PENDING for x in d.devices})
        s = snap(waves, d.wave, 100.0, dict(results))
        assert isinstance(decide(s, now=100.0), Wait)
        results.update({x: R.COMMITTED for x in d.devices})
        s = snap(waves, d.wave, 100.0, dict(results))
    assert steps == ["StartWave"] * 4 + ["Complete"]


def test_the_gate_halts_as_soon_as_too_many_failed_and_rolls_the_wave_back() -> None:
    waves = plan_waves(DEVICES, parse_waves("1,10%,50%,100%"))
    wave = waves[2]  # 20 devices; 5% allows 1 failure
    results = {d: R.COMMITTED for w in waves[:2] for d in w} | {d: R.PENDING for d in wave}
    results[wave[0]] = R.FAILED
    assert isinstance(decide(snap(waves, 2, 0.0, results), now=1.0), Wait)  # 1 of 20 is allowed
    results[wave[1]] = R.FAILED
    d = decide(snap(waves, 2, 0.0, results), now=1.0)
    assert isinstance(d, Halt)
    assert d.wave == 2 and d.rollback == wave
    assert "2 of 20 devices failed" in d.reason


def test_a_wave_within_the_threshold_advances() -> None:
    waves = plan_waves(DEVICES, parse_waves("1,10%,50%,100%"))
    results = {d: R.COMMITTED for w in waves[:3] for d in w}
    results[waves[2][0]] = R.FAILED
    d = decide(snap(waves, 2, 0.0, results), now=1.0)
    assert isinstance(d, StartWave) and d.wave == 3


def test_silent_devices_time_out_and_then_count_as_failed() -> None:
    waves = plan_waves(DEVICES[:10], parse_waves("100%"))
    results = {d: R.COMMITTED for d in waves[0]} | {waves[0][3]: R.PENDING}
    p = policy("100%", 0.0, timeout=30)
    assert isinstance(decide(snap(waves, 0, 100.0, results, pol=p), now=129.9), Wait)
    d = decide(snap(waves, 0, 100.0, results, pol=p), now=130.0)
    assert d == TimeOut((waves[0][3],))
    results[waves[0][3]] = R.TIMED_OUT
    assert isinstance(decide(snap(waves, 0, 100.0, results, pol=p), now=130.0), Halt)


def test_pause_holds_and_abort_rolls_back_everything_reached() -> None:
    waves = plan_waves(DEVICES, parse_waves("1,10%,50%,100%"))
    results = {d: R.COMMITTED for w in waves[:2] for d in w} | {d: R.PENDING for d in waves[2]}
    paused = snap(waves, 2, 0.0, results, status=RolloutStatus.PAUSED)
    assert decide(paused, now=1e9) == Wait("paused")  # not even the timeout fires while paused
    d = decide(snap(waves, 2, 0.0, results, status=RolloutStatus.ABORTING), now=1.0)
    assert isinstance(d, Abort)
    assert set(d.rollback) == {x for w in waves[:3] for x in w}


@pytest.mark.parametrize("status", [RolloutStatus.COMPLETED, RolloutStatus.HALTED, RolloutStatus.ABORTED])
def test_finished_rollouts_do_nothing(status: RolloutStatus) -> None:
    assert isinstance(decide(snap(plan_waves(DEVICES, parse_waves("100%")), status=status), 0.0), Wait)


def test_event_kinds() -> None:
    assert result_of("update.committed") is R.COMMITTED
    for kind in ("update.rolled_back", "update.refused", "update.failed"):
        assert result_of(kind) is R.FAILED
    for kind in ("update.started", "update.downloading", "update.verified", "update.switched", "update.health"):
        assert result_of(kind) is None
