"""Rollouts end to end: real Mosquitto, real director signatures, simulated devices."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.brokers import Mosquitto
from tests.controller.fleetworld import FleetWorld, make_repo, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def world(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[FleetWorld]:
    w = FleetWorld(tmp_path, mosquitto.url, make_repo(tmp_path))
    yield w
    w.stop()


def start(world: FleetWorld, *extra: str) -> int:
    out = world.ok("rollout", "start", "tiny-2.0.0.fgb", "--to", "lab", "--repo", str(world.repo), "--json", *extra)
    return int(json.loads(out)["rollout"]["id"])


def fleet_of(world: FleetWorld, n: int, *extra: str) -> None:
    world.start_controller()
    world.start_fleet(n, *extra)
    world.wait_online(n)
    world.ok("group", "create", "lab")
    world.ok("group", "add", "lab", "--board", "jetson-orin-nano", "--board", "raspberry-pi-5",
             "--board", "kria-kv260", "--board", "generic-x86_64")


def running(world: FleetWorld) -> dict[str, str | None]:
    return world.query(lambda s: {d.id: d.active_bundle for d in s.devices()})


def test_fifty_devices_no_failures_every_wave_completes(world: FleetWorld) -> None:
    fleet_of(world, 50)
    rollout_id = start(world, "--waves", "1,10%,50%,100%", "--wave-timeout", "60s")
    view = world.wait_rollout(rollout_id, "completed")
    assert [len(w) for w in view.plan] == [1, 4, 20, 25]
    assert view.counts() == {"committed": 50}
    # Every device runs the new bundle, and its desired state in the store names it.
    wait_until("all report tiny-2.0.0", lambda: set(running(world).values()) == {"tiny-2.0.0"}, 30)
    desired = world.query(lambda s: s.repos.desired.many(view.devices))
    assert {d.target for d in desired.values()} == {"tiny-2.0.0.fgb"}
    status = world.ok("rollout", "status", str(rollout_id))
    assert "completed" in status.splitlines()[0]
    assert "Traceback" not in world.log("controller")


def test_thirty_percent_failing_halts_at_the_first_wave_over_threshold_and_rolls_back(world: FleetWorld) -> None:
    fleet_of(world, 50, "--fail-rate", "0.3", "--seed", "7")
    rollout_id = start(world, "--waves", "1,10%,50%,100%", "--max-failures", "5%", "--wave-timeout", "60s")
    view = world.wait_rollout(rollout_id, "halted")
    waves = [[view.devices[d].result for d in wave] for wave in view.plan]
    # The first wave whose failures exceed 5% is where it stopped; no later wave was touched.
    halted = view.current_wave
    for i, wave in enumerate(waves[:halted]):
        assert sum(r == "failed" for r in wave) <= int(len(wave) * 0.05), (i, wave)
    assert sum(r == "failed" for r in waves[halted]) > int(len(waves[halted]) * 0.05)
    assert all(r == "waiting" for wave in waves[halted + 1:] for r in wave)
    assert f"wave {halted + 1}:" in view.reason
    # The halted wave is directed back to the bundle each device ran before.
    halted_devices = view.plan[halted]
    desired = world.query(lambda s: s.repos.desired.many(halted_devices))
    assert {desired[d].target for d in halted_devices} == {"tiny-1.0.0.fgb"}
    wait_until("halted wave runs tiny-1.0.0 again",
               lambda: all(running(world)[d] == "tiny-1.0.0" for d in halted_devices), 30)
    assert all(view.devices[d].detail.endswith("directed back to tiny-1.0.0.fgb") for d in halted_devices)


def test_refusals_exit_2_naming_the_problem(world: FleetWorld) -> None:
    world.ok("group", "create", "empty")
    cases = [
        (["rollout", "start", "nope-9.fgb", "--to", "empty"], "not a published target"),
        (["rollout", "start", "tiny-2.0.0.fgb", "--to", "empty"], "has no devices"),
        (["rollout", "start", "tiny-2.0.0.fgb", "--to", "ghosts"], "group 'ghosts' does not exist"),
        (["rollout", "start", "tiny-2.0.0.fgb", "--to", "empty", "--waves", "1,50%"], "last wave must be 100%"),
        (["rollout", "start", "tiny-2.0.0.fgb", "--to", "empty", "--max-failures", "120%"], "outside 0-100%"),
        (["rollout", "start", "tiny-2.0.0.fgb", "--to", "empty", "--wave-timeout", "soon"], "--wave-timeout"),
        (["rollout", "pause", "99"], "rollout 99 does not exist"),
    ]
    for argv, problem in cases:
        rc, _out, err = world.cli(*argv, "--repo", str(world.repo)) if argv[1] == "start" else world.cli(*argv)
        assert rc == 2, (argv, err)
        assert problem in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_pause_resume_and_abort(world: FleetWorld) -> None:
    world.start_controller()
    world.start_fleet(12)
    world.wait_online(12)
    ids = sorted(world.online())
    for name, members in (("a", ids[:6]), ("b", ids[6:])):
        world.ok("group", "create", name)
        world.ok("group", "add", name, *[f"--device={d}" for d in members])
    first = int(json.loads(world.ok("rollout", "start", "tiny-2.0.0.fgb", "--to", "a", "--repo", str(world.repo),
                                    "--waves", "1,50%,100%", "--json"))["rollout"]["id"])
    world.ok("rollout", "pause", str(first))
    paused = world.rollout(first)
    assert paused.status == "paused"
    rc, _, err = world.cli("rollout", "pause", str(first))
    assert rc == 2 and "already paused" in err
    # A second rollout, after the paused one in every tick, runs to the end meanwhile.
    second = int(json.loads(world.ok("rollout", "start", "tiny-2.0.0.fgb", "--to", "b", "--repo",
                                     str(world.repo), "--waves", "1,50%,100%", "--json"))["rollout"]["id"])
    world.wait_rollout(second, "completed")
    held = world.rollout(first)
    assert (held.status, held.current_wave) == ("paused", paused.current_wave)
    assert all(v.result == "waiting" for d, v in held.devices.items() if d not in held.plan[0])
    world.ok("rollout", "resume", str(first))
    wait_until("wave 2 started", lambda: world.rollout(first).current_wave >= 1, 60, alive=world.check_alive)
    world.ok("rollout", "abort", str(first))
    view = world.wait_rollout(first, "aborted")
    reached = [d for d, v in view.devices.items() if v.director_version is not None]
    assert reached and all("directed back to tiny-1.0.0.fgb" in view.devices[d].detail for d in reached)
    wait_until("everyone reached runs tiny-1.0.0",
               lambda: all(running(world)[d] == "tiny-1.0.0" for d in reached), 30)
    assert {running(world)[d] for d in ids[:6]} == {"tiny-1.0.0"}
    rc, _, err = world.cli("rollout", "resume", str(first))
    assert rc == 2 and "aborted" in err


def test_a_sigkilled_controller_resumes_the_rollout(world: FleetWorld) -> None:
    fleet_of(world, 30)
    rollout_id = start(world, "--waves", "1,10%,50%,100%", "--wave-timeout", "60s")
    wait_until("wave 2 started", lambda: world.rollout(rollout_id).current_wave >= 1, 60,
               alive=world.check_alive)
    world.kill("controller", signal.SIGKILL)
    before = world.rollout(rollout_id)
    assert before.status == "running"
    world.start_controller()
    view = world.wait_rollout(rollout_id, "completed")
    assert view.counts() == {"committed": 30}
    # Nobody got a version twice for the same step: versions rise by one per document.
    versions = [v.director_version for v in view.devices.values()]
    assert all(v is not None and v >= 1 for v in versions)
    assert re.search(r"rollout \d+ completed", world.log("controller"))
