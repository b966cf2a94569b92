"""Fleet power end to end: a group budget shared among simulated devices, pushed in their
signed desired documents, re-shared when a device leaves."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.brokers import Mosquitto
from tests.controller.fleetworld import FleetWorld, make_repo, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def world(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[FleetWorld]:
    w = FleetWorld(tmp_path, mosquitto.url, make_repo(tmp_path, versions=("1.0.0",)))
    yield w
    w.stop()


def budgets_in_force(world: FleetWorld) -> dict[str, float | None]:
    """What each online device reports as the budget it runs under."""
    def probe(s):  # type: ignore[no-untyped-def]
        out = {}
        for d in s.devices():
            if d.online:
                power = (s.repos.devices.detail(d.id).reported or {}).get("power") or {}
                out[d.id] = power.get("budget_w")
        return out
    return world.query(probe)


def test_budget_is_shared_pushed_and_reshared_when_a_device_leaves(world: FleetWorld) -> None:
    world.start_controller()
    world.start_fleet(3, "--boards", "jetson-orin-nano", "--telemetry-interval", "0.5", "--prefix", "stay",
                      name="stay")
    world.start_fleet(1, "--boards", "jetson-orin-nano", "--telemetry-interval", "0.5", "--prefix", "away",
                      name="leave")
    world.wait_online(4)
    world.ok("group", "create", "site")
    world.ok("group", "add", "site", "--board", "jetson-orin-nano")
    world.ok("budget", "device", "stay-0000", "--priority", "3", "--floor", "6")
    world.ok("budget", "set", "site", "40")

    def shared(n: int):  # type: ignore[no-untyped-def]
        """The devices' budgets once every one of them runs what the controller last pushed."""
        b = budgets_in_force(world)
        pushed = world.query(lambda s: s.repos.power.allocations("site"))
        return b if len(b) == n and b == pushed else None

    before = wait_until("4 budgets in force", lambda: shared(4), 30, alive=world.check_alive)
    assert sum(before.values()) <= 40 + 1e-6
    assert all(v <= 25 for v in before.values())  # never above the board's peak
    assert before["stay-0000"] >= 6
    shown = json.loads(world.ok("budget", "show", "site", "--json"))["budget"]
    assert shown["budget_w"] == 40 and shown["allocated_w"] <= 40 + 1e-6
    assert {d["id"] for d in shown["devices"]} == set(before)

    world.kill("leave", signal.SIGKILL)  # its Last Will says offline
    # The departed device's share reaches the others: they are pushed budgets that add up
    # to more than they had, and each at least what it had (less the 5% churn band).
    remaining = sum(v for d, v in before.items() if d != "away-0000")

    def reshared():  # type: ignore[no-untyped-def]
        b = shared(3)
        if b and sum(b.values()) > remaining + 0.5 * before["away-0000"]:
            return b
        return None

    after = wait_until("the departed share re-allocated", reshared, 30, alive=world.check_alive)
    assert "away-0000" not in after
    assert sum(after.values()) <= 40 + 1e-6
    assert all(v <= 25 for v in after.values())


def test_budget_refusals(world: FleetWorld) -> None:
    for argv, problem in [
        (["budget", "set", "nope", "10"], "group 'nope' does not exist"),
        (["budget", "set", "nope", "-3"], "watts must be"),
        (["budget", "device", "ghost", "--floor", "1"], "not in the registry"),
        (["budget", "show", "nope"], "does not exist"),
    ]:
        rc, _out, err = world.cli(*argv)
        assert rc == 2, (argv, err)
        assert problem in err, (argv, err)
