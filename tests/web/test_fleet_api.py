"""Groups, power budgets and rollouts through the REST API, against a real controller and the
fleet simulator; every answer checked against the OpenAPI document (tests/web/client.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.demo.brokers import Mosquitto
from tests.controller.fleetworld import wait_until
from tests.web import fleetops
from tests.web.client import RAN
from tests.web.conftest import Web

pytestmark = pytest.mark.timeout(300)
N = 8


@pytest.fixture(autouse=True)
def _ran(request: pytest.FixtureRequest) -> None:
    RAN.add((__name__, request.node.originalname))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fleetops.WebWorld]:
    tmp = tmp_path_factory.mktemp("fleetops")
    broker = Mosquitto(workdir=tmp / "mosquitto")
    broker.start()
    web = fleetops.start(tmp, broker.url, N)
    yield web
    web.stop()
    broker.stop()


def test_groups(fleet: fleetops.WebWorld) -> None:
    api = fleet.api
    groups = {g["name"]: g for g in api.get("/api/v1/groups").json()["groups"]}
    assert set(groups) == {"lab", "empty"} and len(groups["lab"]["members"]) == N
    assert groups["lab"]["rules"] == ["board=jetson-orin-nano", "board=raspberry-pi-5"]
    assert api.get("/api/v1/groups/lab").json() == groups["lab"]
    missing = api.get("/api/v1/groups/nope")
    assert missing.status == 404 and "nope" in missing.json()["error"]
    assert api.get("/api/v1/groups/Bad%20Name").json()["error"].startswith("path.name:")
    assert api.get("/api/v1/groups/nope/power").status == 404
    assert api.get("/api/v1/groups/-x/power").json()["error"].startswith("path.name:")


def test_a_group_budget_is_shared_and_shown(fleet: fleetops.WebWorld) -> None:
    api = fleet.api
    path = "/api/v1/groups/lab/budget"
    assert api.request("PUT", path, {"budget_w": 40}).status == 401
    assert api.request("PUT", path, {"budget_w": -1}, token=fleet.token).json()["error"].startswith("body.budget_w:")
    assert api.request("PUT", path, raw=b"{", token=fleet.token).status == 400
    assert api.request("PUT", path, raw=b'{"budget_w": 1' + b" " * 70_000 + b"}", token=fleet.token).status == 413
    assert api.request("PUT", "/api/v1/groups/nope/budget", {"budget_w": 1}, token=fleet.token).status == 404
    answer = api.request("PUT", path, {"budget_w": 40}, token=fleet.token)
    assert answer.status == 200 and answer.json()["budget_w"] == 40
    # The leader's power loop shares it; the group's power view shows allocation and draw.
    power = wait_until("the budget allocated", lambda: (p if (p := api.get("/api/v1/groups/lab/power").json())[
        "allocated_w"] > 0 else None), 30, alive=fleet.world.check_alive)
    assert power["budget_w"] == 40 and 0 < power["allocated_w"] <= 40 + 1e-6
    assert len(power["devices"]) == N and all(d["online"] for d in power["devices"])
    assert any(d["draw_w"] for d in power["devices"])
    # The device's own view shows its allocation as its budget.
    device = power["devices"][0]
    wait_until("the allocation in the device view", lambda: api.get(f"/api/v1/devices/{device['device_id']}")
               .json()["desired"]["power_budget_w"] is not None, 30)
    assert api.request("PUT", path, {"budget_w": None}, token=fleet.token).json()["budget_w"] is None


def test_rollout_start_watch_and_refusals(fleet: fleetops.WebWorld) -> None:
    api = fleet.api
    body = {"bundle": "tiny-2.0.0.fgb", "group": "lab", "waves": "1,50%,100%", "wave_timeout_s": 60}
    assert api.request("POST", "/api/v1/rollouts", body).status == 401
    assert api.request("POST", "/api/v1/rollouts", raw=b"{bundle", token=fleet.token).status == 400
    big = b'{"bundle": "' + b"x" * 70_000 + b'"}'
    assert api.request("POST", "/api/v1/rollouts", raw=big, token=fleet.token).status == 413
    for bad, field in (({**body, "waves": "1,50%"}, "body:"), ({**body, "max_failures": "lots"}, "body:"),
                       ({**body, "wave_timeout_s": 0}, "body.wave_timeout_s:"),
                       ({**body, "group": "A B"}, "body.group:"),
                       ({"group": "lab"}, "body.bundle:")):
        answer = api.request("POST", "/api/v1/rollouts", bad, token=fleet.token)
        assert answer.status == 422 and answer.json()["error"].startswith(field), (bad, answer.json())
    assert api.request("POST", "/api/v1/rollouts", {**body, "group": "nope"}, token=fleet.token).status == 404
    for refused, text in (({**body, "bundle": "nope-9.fgb"}, "not a published target"),
                          ({**body, "group": "empty"}, "has no devices")):
        answer = api.request("POST", "/api/v1/rollouts", refused, token=fleet.token)
        assert answer.status == 409 and text in answer.json()["error"]
    started = api.request("POST", "/api/v1/rollouts", body, token=fleet.token)
    assert started.status == 201, started.body
    rollout = started.json()
    assert started.headers["location"] == f"/api/v1/rollouts/{rollout['id']}"
    assert [w["size"] for w in rollout["waves"]] == [1, 3, 4] and rollout["wave_count"] == 3
    busy = api.request("POST", "/api/v1/rollouts", body, token=fleet.token)
    assert busy.status == 409 and "unfinished rollout" in busy.json()["error"]
    done = fleetops.wait_status(fleet, rollout["id"], "completed")
    assert done["counts"] == {"committed": N} and [w["state"] for w in done["waves"]] == ["done"] * 3
    assert all(d["result"] == "committed" for w in done["waves"] for d in w["devices"])
    listed = api.get("/api/v1/rollouts").json()["rollouts"]
    assert listed[0]["id"] == rollout["id"] and listed[0]["status"] == "completed"
    # A finished rollout cannot be paused; an unknown one is 404.
    late = api.request("POST", f"/api/v1/rollouts/{rollout['id']}/pause", token=fleet.token)
    assert late.status == 409 and "completed" in late.json()["error"]
    assert api.request("POST", "/api/v1/rollouts/999/pause", token=fleet.token).status == 404
    assert api.request("POST", f"/api/v1/rollouts/{rollout['id']}/pause").status == 401
    assert api.get("/api/v1/rollouts/999").status == 404
    assert api.get("/api/v1/rollouts/0").json()["error"].startswith("path.rollout_id:")
    assert api.request("POST", f"/api/v1/rollouts/{rollout['id']}/explode", token=fleet.token).status == 422


def test_pause_resume_and_abort(fleet: fleetops.WebWorld) -> None:
    api = fleet.api
    back = {"bundle": "tiny-1.0.0.fgb", "group": "lab", "waves": "1,100%", "wave_timeout_s": 60}
    rollout = api.request("POST", "/api/v1/rollouts", back, token=fleet.token).json()
    paused = api.request("POST", f"/api/v1/rollouts/{rollout['id']}/pause", token=fleet.token)
    assert paused.status == 200 and paused.json()["status"] == "paused"
    again = api.request("POST", f"/api/v1/rollouts/{rollout['id']}/pause", token=fleet.token)
    assert again.status == 409 and "already paused" in again.json()["error"]
    resumed = api.request("POST", f"/api/v1/rollouts/{rollout['id']}/resume", token=fleet.token)
    assert resumed.json()["status"] == "running"
    fleetops.wait_status(fleet, rollout["id"], "completed")
    forward = api.request("POST", "/api/v1/rollouts", {**back, "bundle": "tiny-2.0.0.fgb"}, token=fleet.token).json()
    aborted = api.request("POST", f"/api/v1/rollouts/{forward['id']}/abort", token=fleet.token).json()
    assert aborted["status"] in ("aborting", "aborted")
    fleetops.wait_status(fleet, forward["id"], "aborted")


def test_fleet_reads_need_a_token_from_elsewhere_and_ops_need_a_repository(tmp_path: Path) -> None:
    """Without an image repository the rollout endpoints answer 503 (the `web` fixture has none)."""
    from tests.web.conftest import start_web

    web: Web = start_web(tmp_path, n=1)
    try:
        answer = web.api.request("POST", "/api/v1/rollouts", {"bundle": "x.fgb", "group": "lab"}, token=web.token)
        assert answer.status == 503 and "repository" in answer.json()["error"]
        assert web.api.get("/api/v1/groups").json() == {"groups": []}
        assert web.api.get("/api/v1/rollouts").json() == {"rollouts": []}
    finally:
        web.server.stop()
        web.store.close()
