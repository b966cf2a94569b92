"""The power allocator: weighted water-filling with floors, caps, priorities; bounded churn."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.fleet.power import DEMAND_HEADROOM, Allocation, PowerNeed, allocate, changed, settle

EPS = 1e-6


@st.composite
def needs(draw: st.DrawFn) -> list[PowerNeed]:
    n = draw(st.integers(min_value=1, max_value=30))
    out = []
    for i in range(n):
        floor = draw(st.floats(min_value=0, max_value=20))
        cap = floor + draw(st.floats(min_value=0, max_value=60))
        demand = draw(st.none() | st.floats(min_value=0, max_value=100))
        priority = draw(st.floats(min_value=0.1, max_value=10))
        out.append(PowerNeed(f"d{i}", demand, floor, cap, priority))
    return out


budgets = st.floats(min_value=0, max_value=2000)


@settings(max_examples=150, deadline=None)
@given(needs(), budgets)
def test_never_above_budget_within_caps_and_floors_when_feasible(ns: list[PowerNeed], budget: float) -> None:
    a = allocate(budget, ns)
    assert set(a.shares) == {n.device_id for n in ns}
    assert a.total_w <= budget + EPS
    feasible = sum(n.floor_w for n in ns) <= budget
    assert a.overcommitted is not feasible
    for n in ns:
        share = a.shares[n.device_id]
        assert 0 <= share <= n.cap_w + EPS
        if feasible:
            assert share >= n.floor_w - EPS


@settings(max_examples=150, deadline=None)
@given(needs(), budgets)
def test_the_budget_is_used_while_someone_can_take_it(ns: list[PowerNeed], budget: float) -> None:
    a = allocate(budget, ns)
    if a.overcommitted:
        return
    assert a.total_w == pytest.approx(min(budget, sum(n.cap_w for n in ns)), rel=1e-6, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(needs(), budgets, st.floats(min_value=1.01, max_value=10))
def test_higher_priority_never_gets_less_than_an_equal_device(ns: list[PowerNeed], budget: float,
                                                              factor: float) -> None:
    twin = ns[0]
    ns = [*ns, PowerNeed("vip", twin.demand_w, twin.floor_w, twin.cap_w, twin.priority * factor)]
    a = allocate(budget, ns)
    assert a.shares["vip"] >= a.shares[twin.device_id] - EPS


@settings(max_examples=150, deadline=None)
@given(needs(), budgets)
def test_demand_is_met_before_surplus_goes_to_caps(ns: list[PowerNeed], budget: float) -> None:
    a = allocate(budget, ns)
    if a.overcommitted:
        return
    if any(a.shares[n.device_id] < n.want_w - EPS for n in ns):
        # Someone's demand is unmet, so nobody holds more than they want.
        assert all(a.shares[n.device_id] <= n.want_w + EPS for n in ns)


def test_weighted_water_filling_by_hand() -> None:
    # 30 W for three hungry devices (demand 100 W each, caps 50 W), priorities 1, 1, 2.
    ns = [PowerNeed("a", 100, 0, 50, 1), PowerNeed("b", 100, 0, 50, 1), PowerNeed("c", 100, 0, 50, 2)]
    a = allocate(40, ns)
    assert a.shares == pytest.approx({"a": 10, "b": 10, "c": 20})
    # A device with a small demand gets it; the rest go to the others.
    ns = [PowerNeed("idle", 2, 1, 50, 1), PowerNeed("busy", 40, 1, 50, 1)]
    a = allocate(30, ns)
    assert a.shares["idle"] == pytest.approx(2 * DEMAND_HEADROOM)
    assert a.shares["busy"] == pytest.approx(30 - 2 * DEMAND_HEADROOM)


def test_floors_above_the_budget_scale_down_and_say_so() -> None:
    a = allocate(10, [PowerNeed("a", 5, 8, 20), PowerNeed("b", 5, 12, 20)])
    assert a.overcommitted
    assert a.total_w == pytest.approx(10)
    assert a.shares["a"] / a.shares["b"] == pytest.approx(8 / 12)


def test_unknown_demand_wants_the_cap() -> None:
    a = allocate(100, [PowerNeed("new", None, 0, 25), PowerNeed("old", 5, 0, 25)])
    assert a.shares["new"] == pytest.approx(25)


def test_bad_needs_are_refused() -> None:
    with pytest.raises(ValueError, match="priority"):
        PowerNeed("x", 1, 0, 10, 0)
    with pytest.raises(ValueError, match="floor"):
        PowerNeed("x", 1, 5, 4, 1)


@settings(max_examples=150, deadline=None)
@given(needs(), budgets, st.data())
def test_settling_keeps_the_budget_and_skips_small_changes(ns: list[PowerNeed], budget: float,
                                                          data: st.DataObject) -> None:
    a = allocate(budget, ns)
    previous = {d: w * data.draw(st.floats(min_value=0.9, max_value=1.1)) for d, w in a.shares.items()}
    settled = settle(previous, a)
    assert sum(settled.values()) <= budget + EPS
    for d, w in settled.items():
        if w != a.shares[d]:  # kept the old value: only for a change under 5%
            assert w == previous[d]
            assert abs(a.shares[d] - previous[d]) < 0.05 * previous[d]
    # Applying the same allocation again pushes nothing.
    assert changed(settled, settle(settled, a)) == {}


def test_a_device_leaving_frees_its_share_for_the_others() -> None:
    ns = [PowerNeed(f"d{i}", 30, 2, 25) for i in range(4)]
    before = settle({}, allocate(60, ns))
    assert before == pytest.approx({f"d{i}": 15 for i in range(4)})
    after = settle(before, allocate(60, ns[:3]))
    assert after == pytest.approx({f"d{i}": 20 for i in range(3)})
    assert set(changed(before, after)) == {"d0", "d1", "d2"}


def test_small_moves_are_not_re_pushed() -> None:
    before = {"a": 10.0, "b": 10.0}
    a = Allocation(20.0, {"a": 10.3, "b": 9.7})
    assert changed(before, settle(before, a)) == {}
    big = Allocation(20.0, {"a": 11.0, "b": 9.0})
    assert set(changed(before, settle(before, big))) == {"a", "b"}
    assert math.isclose(sum(settle(before, big).values()), 20.0)
