"""The dashboard in headless Chromium, against `fleetgen serve --http` fed by a simulated fleet
over a real Mosquitto: pages load without console errors, the fleet table shows the fleet, a
device's charts have points, live updates arrive, and HTML a device reports renders as text.
Screenshots go to tests/web/output/ (FLEETGEN_TEST_OUTPUT)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.brokers import Mosquitto
from tests.web import fleet
from tests.web.browser import OUTPUT, chromium, console_errors, wait_for
from tests.web.conftest import HOSTILE, wait_until
from tests.web.mqttfleet import ServedController, link_for, publish

N = 40


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
