"""The dashboard in headless Chromium, against `fleetgen serve --http` fed by a simulated fleet
over a real Mosquitto: pages load without console errors, the fleet table shows the fleet, a
device's charts have points, live updates arrive, and HTML a device reports renders as text.
Screenshots go to tests/web/output/ (FLEETGEN_TEST_OUTPUT)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.demo.brokers import Mosquitto
from tests.web import fleet, fleetops
from tests.web.browser import OUTPUT, chromium, console_errors, wait_for
from tests.web.conftest import HOSTILE, wait_until
from tests.web.mqttfleet import ServedController, link_for, publish

N = 40
# FLEETGEN_DOCS_SCREENSHOTS=1 pytest tests/web/test_browser.py -k pages writes the README's screenshot.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"


@pytest.fixture
def dashboard(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[ServedController, Any, Any]]:
    served = ServedController(tmp_path / "controller", mosquitto.url)
    served.start()
    link = link_for(mosquitto.url)
    now = time.time()
    devices = fleet.devices(N)
    hostile = fleet.SimDevice("sim-hostile", HOSTILE, "x", 5.0, True)
    try:
        publish(link, fleet.state(devices[0], now))
        wait_until(lambda: served.get("/api/v1/devices")["total"] == 1, what="ingest")  # type: ignore[index]
        for d in devices:
            publish(link, [*fleet.state(d, now), *fleet.history(d, now, 1800, 20), *fleet.events(d, now)])
        publish(link, [*fleet.state(hostile, now, label=HOSTILE), *fleet.history(hostile, now, 600, 20),
                       *fleet.events(hostile, now)])
        last = devices[-1].id
        wait_until(lambda: served.get("/api/v1/devices")["total"] == N + 1  # type: ignore[index]
                   and len(served.get(f"/api/v1/devices/{last}/events")["events"]) == 2,  # type: ignore[index]
                   timeout=30, what="the simulated fleet in the store")
        with chromium(tmp_path / "chrome") as driver:
            yield served, driver, link
    finally:
        link.stop()
        assert served.stop() == 0


def _ready(view: str):  # type: ignore[no-untyped-def]
    return lambda d: d.execute_script("return document.body.dataset.ready") == view


def _rows(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#fleet-table tbody tr[data-device]')].map(r => r.dataset.device)")


def test_dashboard_pages(dashboard: tuple[ServedController, Any, Any]) -> None:
    served, driver, link = dashboard
    OUTPUT.mkdir(parents=True, exist_ok=True)

    # Fleet table: every device, the hostile board as text, no script ran.
    driver.get(served.url + "/")
    wait_for(driver, _ready("fleet"), what="the fleet table")
    assert sorted(_rows(driver)) == sorted([*(d.id for d in fleet.devices(N)), "sim-hostile"])
    cell = driver.execute_script(
        "return document.querySelector('tr[data-device=\"sim-hostile\"] td:nth-child(3)').textContent")
    assert cell == HOSTILE
    assert driver.execute_script("return window.__pwned === undefined && !document.querySelector('main img')")
    driver.save_screenshot(str(OUTPUT / "fleet.png"))
    if os.environ.get("FLEETGEN_DOCS_SCREENSHOTS"):  # the README's picture, refreshed on demand
        shutil.copyfile(OUTPUT / "fleet.png", DOCS_SCREENSHOT)  # (not every run: it would dirty the tree)
    assert console_errors(driver) == []

    # Filter and sort.
    box = driver.find_element("id", "fleet-filter")
    box.send_keys("kria")
    wait_for(driver, lambda d: len(_rows(d)) == N // 4, what="the filtered table")
    driver.execute_script("const b = document.getElementById('fleet-filter'); b.value = '';"
                          "b.dispatchEvent(new Event('input'))")
    driver.find_element("css selector", "th[data-key='power_w']").click()
    powers = driver.execute_script(
        "return [...document.querySelectorAll('#fleet-table tbody tr td:nth-child(5)')].map(td => td.textContent)")
    values = [float(p.split(" / ")[0]) for p in powers if not p.startswith("\u2013")]  # an en dash: no value
    assert len(values) == N + 1 and values == sorted(values)

    # Live update: a device that appears after the page loaded shows up without a reload.
    late = fleet.SimDevice("sim-late", "kria-kv260", "x", 5.0, True)
    publish(link, fleet.state(late, time.time()))
    wait_for(driver, lambda d: "sim-late" in _rows(d), timeout=20, what="the late device (polling)")

    # A device page: charts with points, the event log.
    driver.get(served.url + "/devices/sim-00003")
    wait_for(driver, _ready("device"), what="the device page")
    points = driver.execute_script(
        "return ['chart-power','chart-tokens','chart-latency','chart-temp','chart-memory'].map(id => "
        "document.getElementById(id).data[0].y.filter(v => v !== null).length)")
    assert all(p > 0 for p in points), points
    assert driver.execute_script("return document.getElementById('chart-power').data.length") == 2  # draw + budget
    kinds = driver.execute_script(
        "return [...document.querySelectorAll('#events-table tbody td:nth-child(3)')].map(td => td.textContent)")
    assert kinds == ["install.committed", "install.started"]
    driver.save_screenshot(str(OUTPUT / "device.png"))
    assert console_errors(driver) == []

    # The hostile device's own page: its board is text there too.
    driver.get(served.url + "/devices/sim-hostile")
    wait_for(driver, _ready("device"), what="the hostile device's page")
    facts = driver.execute_script("return document.getElementById('device-facts').textContent")
    assert HOSTILE in facts
    assert driver.execute_script("return window.__pwned === undefined && !document.querySelector('main img')")
    assert console_errors(driver) == []


def test_unknown_device_page_says_so(dashboard: tuple[ServedController, Any, Any]) -> None:
    served, driver, _ = dashboard
    driver.get(served.url + "/devices/ghost")
    text = wait_for(driver, lambda d: d.execute_script(
        "const e = document.querySelector('main .error'); return e && e.textContent"), what="the error line")
    assert "ghost" in text
    # The only console entry is the browser's own note of the 404 answer.
    assert all("404" in e["message"] for e in console_errors(driver))


@pytest.fixture
def ops(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[fleetops.WebWorld, Any]]:
    web = fleetops.start(tmp_path, mosquitto.url, 12)
    try:
        with chromium(tmp_path / "chrome") as driver:
            yield web, driver
    finally:
        web.stop()


def _done_waves(driver: Any) -> tuple[int, str]:
    states = driver.execute_script(
        "return [...document.querySelectorAll('#rollout-waves .wave')].map(w => w.dataset.state)")
    return sum(s == "done" for s in states), driver.execute_script("return document.body.dataset.status")


def test_fleet_operations_pages(ops: tuple[fleetops.WebWorld, Any]) -> None:
    """The simulator's fleet (fleetgen simulate): a rollout page shows its waves advancing, a
    group's power page its allocation, and a label with HTML in it is text."""
    web, driver = ops
    OUTPUT.mkdir(parents=True, exist_ok=True)
    api = web.api

    driver.get(web.url + "/")
    wait_for(driver, _ready("fleet"), what="the fleet table")
    assert len(_rows(driver)) == 12
    assert console_errors(driver) == []

    # The simulated devices carry a label with HTML in it: text on the device page.
    device = _rows(driver)[0]
    driver.get(f"{web.url}/devices/{device}")
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'device' && "
                                                "Number(document.body.dataset.points) > 0"),
             timeout=30, what="a device page with telemetry points")
    facts = driver.execute_script("return document.getElementById('device-facts').textContent")
    assert f"site={fleetops.HOSTILE_LABEL}" in facts
    assert driver.execute_script("return window.__pwned === undefined && !document.querySelector('main img')")
    assert console_errors(driver) == []

    # A rollout, paused at once so the page can be seen mid-way, then resumed to the end.
    body = {"bundle": "tiny-2.0.0.fgb", "group": "lab", "waves": "1,50%,100%", "wave_timeout_s": 60}
    rollout = api.request("POST", "/api/v1/rollouts", body, token=web.token).json()
    api.request("POST", f"/api/v1/rollouts/{rollout['id']}/pause", token=web.token)
    driver.get(f"{web.url}/rollouts/{rollout['id']}")
    wait_for(driver, _ready("rollout"), what="the rollout page")
    seen = [_done_waves(driver)]
    assert seen[0][1] == "paused" and seen[0][0] < 3
    driver.save_screenshot(str(OUTPUT / "rollout-paused.png"))
    api.request("POST", f"/api/v1/rollouts/{rollout['id']}/resume", token=web.token)

    def finished(d: Any) -> bool:
        seen.append(_done_waves(d))
        return seen[-1] == (3, "completed")

    wait_for(driver, finished, timeout=90, what="the rollout page to show every wave done")
    done = [n for n, _ in seen]
    assert done == sorted(done) and done[0] < 3 == done[-1]  # waves only ever advance
    outcomes = driver.execute_script(
        "return [...document.querySelectorAll('#rollout-table tbody td:nth-child(3)')].map(td => td.textContent)")
    assert outcomes == ["committed"] * 12
    driver.save_screenshot(str(OUTPUT / "rollout.png"))
    assert console_errors(driver) == []

    # A group's power page: budget, allocation per device, measured draw.
    api.request("PUT", "/api/v1/groups/lab/budget", {"budget_w": 30}, token=web.token)
    driver.get(web.url + "/groups/lab")
    wait_for(driver, lambda d: d.execute_script(
        "return document.body.dataset.ready === 'group' && "
        "document.getElementById('chart-allocation').data[0].y.some(v => v > 0)"), timeout=30,
        what="allocations on the group page")
    assert len(driver.find_elements("css selector", "#group-table tbody tr")) == 12
    driver.save_screenshot(str(OUTPUT / "group-power.png"))
    for page, ready in (("/rollouts", "rollouts"), ("/groups", "groups")):
        driver.get(web.url + page)
        wait_for(driver, _ready(ready), what=page)
    assert console_errors(driver) == []
