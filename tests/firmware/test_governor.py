"""The governor as pure logic: time and draw in, knobs out."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.errors import SettingsError
from firmware.governor import Governor, build_levels
from firmware.profile import BoardProfile, MatchRules, PowerMode
from firmware.settings import PowerSettings

MODES = (
    PowerMode(3, "7W", "nvpmodel", 7.0, 0.4),
    PowerMode(0, "15W", "nvpmodel", 15.0, 0.6),
    PowerMode(2, "MAXN", "nvpmodel", None, 1.0),
)
PROFILE = BoardProfile(id="t", name="test", arch="aarch64", priority=0, match=MatchRules(),
                       idle_w=5.0, peak_w=25.0, per_core_dynamic_w=2.0, cores=4, modes=MODES)


def make(budget: float | None = None, **kw: object) -> Governor:
    s = PowerSettings(budget_w=budget, tick_s=1.0, **kw)  # type: ignore[arg-type]
    return Governor.for_board(PROFILE, 4, s)


def plant(g: Governor) -> float:
    """A board that draws exactly what the governor's model says (no lag, no noise)."""
    if not g.admit:
        return PROFILE.idle_w
    return PROFILE.idle_w + g.duty * g.level.dyn_w


def test_levels_cover_every_mode_and_thread_count() -> None:
    levels = build_levels(PROFILE, 4, PowerSettings())
    assert len(levels) == 3 * 4
    assert {lv.mode_id for lv in levels} == {3, 0, 2}
    top = max(levels, key=lambda lv: lv.perf)
    assert (top.mode_id, top.threads, top.perf) == (2, 4, 1.0)
    limited = build_levels(PROFILE, 8, PowerSettings(min_threads=2, max_threads=3))
    assert {lv.threads for lv in limited} == {2, 3}
    flat = build_levels(BoardProfile(**{**PROFILE.__dict__, "modes": ()}), 2, PowerSettings())
    assert [lv.mode for lv in flat] == [None, None]


def test_thread_changes_wait_their_dwell_and_come_before_mode_changes() -> None:
    # 8 cores and three modes: after the cut both fewer threads (same mode) and a lower
    # mode beat the current level, so the order of the two changes is the knob order.
    g = Governor.for_board(PROFILE, 8, PowerSettings(budget_w=30.0, tick_s=1.0,
                                                     thread_dwell_s=5.0, mode_dwell_s=15.0))
    t = 0.0
    for _ in range(10):
        t += 1
        g.step(t, plant(g))
    assert (g.level.mode_id, g.level.threads) == (2, 8)
    g.set_budget(9.0)
    start = t
    changes = []
    for _ in range(30):
        t += 1
        d = g.step(t, plant(g))
        if d.changed:
            changes.append((t - start, d.changed, d.mode_name, d.threads))
    assert len(changes) >= 2
    first, second = changes[0], changes[1]
    assert first[1] == ("threads",) and first[2] == "MAXN" and first[3] < 8
    assert first[0] >= 5  # the thread dwell
    assert "mode" in second[1] and second[2] != "MAXN"
    assert second[0] >= 15  # the mode dwell, counted from when it became better
    assert d.average_w <= 9.0 * 1.05


def test_no_budget_means_full_speed() -> None:
    g = make(None)
    d = g.step(1.0, 24.0)
    assert (d.mode_name, d.threads, d.duty, d.admit, d.throttled) == ("MAXN", 4, 1.0, True, False)
    assert d.reason == "no budget: full speed"


def test_budget_drop_moves_pacing_at_once_and_the_mode_after_its_dwell() -> None:
    g = make(30.0, thread_dwell_s=5.0, mode_dwell_s=15.0)
    t = 0.0
    for _ in range(20):
        t += 1
        g.step(t, plant(g))
    assert g.level.mode_id == 2 and g.duty == 1.0
    g.set_budget(12.0)
    t += 1
    d = g.step(t, plant(g))
    # Same step: pacing only.
    assert d.duty < 1.0 and d.mode_name == "MAXN" and d.threads == 4 and d.changed == ()
    history = [(t, d)]
    for _ in range(40):
        t += 1
        history.append((t, g.step(t, plant(g))))
    mode_change = next(tt for tt, x in history if "mode" in x.changed)
    assert mode_change - history[0][0] >= 15  # the board mode waits its dwell time
    assert all(x.duty < 1.0 for _, x in history[:10])  # pacing carried it meanwhile
    final = history[-1][1]
    assert final.average_w <= 12.0 * 1.05
    assert final.throttled


def test_budget_below_idle_queues_work_and_says_why() -> None:
    g = make(3.0)
    d = g.step(1.0, 6.0)
    assert not d.admit and d.throttled
    assert "below the board's idle draw" in d.reason
    assert d.duty == g.settings.min_duty and d.threads == 1 and d.mode_name == "7W"
    assert d.changed == ("mode", "threads", "admit")
    g.set_budget(5.05)  # above idle, below idle + the lowest level at the lowest pacing
    d = g.step(2.0, 5.0)
    assert not d.admit and "lowest working draw" in d.reason
    g.set_budget(20.0)
    d = g.step(3.0, 5.0)
    assert d.admit and "admit" in d.changed


def test_idle_higher_than_profile_is_learned_and_work_queued() -> None:
    g = make(5.5)
    t = 0.0
    d = None
    for _ in range(40):
        t += 1
        d = g.step(t, 6.2)  # this board idles at 6.2 W, above the budget
    assert d is not None and not d.admit
    assert g.idle_w > 5.5


def test_not_busy_teaches_idle_and_does_not_wind_up() -> None:
    g = make(15.0)
    for i in range(60):
        g.step(float(i + 1), 5.6, busy=False)
    assert g.idle_w == pytest.approx(5.6, abs=0.01)
    assert abs(g._integral) < 1e-9  # no error integrated while there was no work
    d = g.step(61.0, 5.6, busy=True)
    assert d.admit and 0 < d.duty <= 1


def test_anti_windup_saturated_top_level() -> None:
    g = make(100.0)  # far above what the board can draw
    for i in range(100):
        g.step(float(i + 1), 20.0)
    assert g.duty == 1.0
    limit = 0.3 * max(g.dyn_hat(lv) for lv in g.levels)
    assert abs(g._integral) <= limit + 1e-9
    g.set_budget(12.0)
    d = g.step(101.0, 20.0)
    assert d.duty < 0.5  # acts at once, no wound-up integral to unwind


def test_noise_around_the_setpoint_does_not_flap_levels() -> None:
    import random

    rng = random.Random(7)
    g = make(14.0)
    t, changes = 0.0, 0
    for _ in range(600):
        t += 1
        changes += len(g.step(t, plant(g) * (1 + rng.gauss(0, 0.03))).changed)
    assert changes <= 6


def test_garbage_measurements_are_ignored() -> None:
    g = make(10.0)
    g.step(1.0, 9.0)
    for bad in (math.nan, math.inf, -3.0):
        d = g.step(2.0, bad)
        assert math.isfinite(d.average_w) and 0 < d.duty <= 1


def test_invalid_budgets_and_settings_are_refused() -> None:
    g = make(10.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(SettingsError, match="budget"):
            g.set_budget(bad)
    with pytest.raises(SettingsError, match="window_s"):
        PowerSettings(window_s=0)
    with pytest.raises(SettingsError, match="max_threads 1 is below min_threads 2"):
        PowerSettings(min_threads=2, max_threads=1)
    with pytest.raises(SettingsError, match="tick_s 20 must not exceed window_s 10"):
        PowerSettings(tick_s=20)
    with pytest.raises(SettingsError, match="budget_w"):
        PowerSettings(budget_w=-5)


def test_decision_details_fit_the_agent_report() -> None:
    d = make(12.0).step(1.0, 11.0)
    details = d.knob_details()
    assert set(details) == {"mode", "mode_id", "threads", "duty", "admit", "throttled"}
    assert all(isinstance(v, str | int | float | bool) or v is None for v in details.values())


@settings(max_examples=150, deadline=None)
@given(
    budget=st.one_of(st.none(), st.floats(0.5, 60)),
    draws=st.lists(st.floats(0, 80, allow_nan=False), min_size=1, max_size=60),
    busy=st.lists(st.booleans(), min_size=1, max_size=60),
    dt=st.floats(0.05, 5.0),
)
def test_knobs_always_stay_within_their_ranges(
    budget: float | None, draws: list[float], busy: list[bool], dt: float
) -> None:
    g = make(budget)
    t = 0.0
    for i, w in enumerate(draws):
        t += dt
        d = g.step(t, w, busy=busy[i % len(busy)])
        assert g.settings.min_duty <= d.duty <= 1.0
        assert 1 <= d.threads <= 4
        assert d.mode_id in (3, 0, 2)
        assert math.isfinite(d.average_w)
        if budget is not None and budget < PROFILE.idle_w * 0.5:
            assert not d.admit  # below any idle the governor may learn
