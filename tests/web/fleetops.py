"""A controller with its web face (`fleetgen serve --http`), an image repository with two
bundles, and the fleet simulator (`fleetgen simulate`) on a real Mosquitto; groups and an
API token made with the CLI. Shared by the fleet-operations API tests and the browser test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.controller.fleetworld import FleetWorld, make_repo, wait_until
from tests.web.client import Api

HOSTILE_LABEL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@dataclass
class WebWorld:
    world: FleetWorld
    url: str
    api: Api
    token: str

    def stop(self) -> None:
        self.world.stop()


def start(tmp: Path, broker_url: str, devices: int, *sim_args: str) -> WebWorld:
    world = FleetWorld(tmp, broker_url, make_repo(tmp))
    world._spawn("controller", ["serve", "--config", str(world.controller_config("controller")),
                                "--http", "127.0.0.1:0"])
    url = wait_until("the controller's web face", lambda: (m.group(1) if (m := re.search(
        r"http: dashboard and API on (http://\S+)", world.log("controller"))) else None), 30,
        alive=world.check_alive)
    world.start_fleet(devices, "--boards", "jetson-orin-nano:1,raspberry-pi-5:1", "--label", f"site={HOSTILE_LABEL}",
                      "--telemetry-interval", "0.5", *sim_args)
    world.wait_online(devices)
    token = world.ok("token", "create", "tests").strip()
    world.ok("group", "create", "lab")
    world.ok("group", "add", "lab", "--board", "jetson-orin-nano", "--board", "raspberry-pi-5")
    world.ok("group", "create", "empty")
    return WebWorld(world, url, Api(url, token=None), token)


def wait_status(web: WebWorld, rollout_id: int, status: str, timeout: float = 90) -> dict:  # type: ignore[type-arg]
    def probe() -> dict | None:  # type: ignore[type-arg]
        body = web.api.get(f"/api/v1/rollouts/{rollout_id}").json()
        return body if body["status"] == status else None

    return wait_until(f"rollout {rollout_id} {status}", probe, timeout, alive=web.world.check_alive)


