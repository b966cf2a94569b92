"""Benchmark: the controller's web face at 5,000 devices.

Targets (issue 12): the fleet page shows its rendered table within 1 s of navigation in
headless Chromium; API latency p50/p95 for the device list and for one device's 24 h of
telemetry; the controller process's memory.

The store is filled through `Store.apply` (the ingest's write path): 5,000 devices, each
with its state, 10 minutes of samples every 30 s and two events; one of them with 24 h of
samples every 5 s (17,280). Then `fleetgen serve --http` runs as its own process on that
database (with a real Mosquitto) and is measured from outside: HTTP timings with a plain
client, page loads with Chromium (time from navigation start to the `fleet-rendered`
performance mark the page sets once the first frame with the table is painted; the table
draws the rows in view, and the bench scrolls to the end to see the last device), RSS and
VmHWM from /proc.

    python tests/bench/controller_web.py [--devices 5000] [--runs 30] [--loads 5]

Prints a table and writes tests/bench/results/controller_web.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.demo.brokers import Mosquitto  # noqa: E402
from controller.store import Store  # noqa: E402
from tests.web import fleet  # noqa: E402
from tests.web.browser import chromium  # noqa: E402
from tests.web.mqttfleet import ServedController  # noqa: E402

RESULTS = ROOT / "tests" / "bench" / "results" / "controller_web.json"


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def timed_get(host: str, port: int, path: str, runs: int) -> dict[str, float]:
    times = []
    size = 0
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status == 200, (path, resp.status, body[:200])
        size = len(body)
    conn.close()
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))], "bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgen-bench-web-") as tmp:
        work = Path(tmp)
        now = time.time()
        store = Store(f"sqlite:///{work / 'controller' / 'controller.db'}")
        t0 = time.perf_counter()
        devices = fleet.devices(args.devices)
        fleet.fill(store, devices, now, history_s=600, every_s=30)
        target = devices[1]
        store.apply(list(fleet.history(target, now - 600, 86400 - 600, 5)))
        fill_s = time.perf_counter() - t0
        store.close()
        broker = Mosquitto(workdir=work / "mosquitto")
        broker.start()
        served = ServedController(work / "controller", broker.url)
        try:
            served.start()
            assert served.proc is not None
            host, port = "127.0.0.1", int(served.url.rsplit(":", 1)[1])
            idle = proc_status(served.proc.pid)
            api = {
                "device list, first 100": timed_get(host, port, "/api/v1/devices?limit=100", args.runs),
                f"device list, all {args.devices}": timed_get(host, port, "/api/v1/devices?limit=10000", args.runs),
                "device list, sorted by power": timed_get(host, port, "/api/v1/devices?sort=power_w&order=desc",
                                                          args.runs),
                "one device": timed_get(host, port, f"/api/v1/devices/{target.id}", args.runs),
                "24 h telemetry, step 288 s (dashboard)": timed_get(
                    host, port, f"/api/v1/devices/{target.id}/telemetry?since={now - 86400}&until={now}&step=288",
                    args.runs),
                "24 h telemetry, step 60 s": timed_get(
                    host, port, f"/api/v1/devices/{target.id}/telemetry?since={now - 86400}&until={now}&step=60",
                    args.runs),
                "1 h telemetry, raw (720 samples)": timed_get(
                    host, port, f"/api/v1/devices/{target.id}/telemetry?since={now - 3600}&until={now}", args.runs),
                "/metrics": timed_get(host, port, "/metrics", max(5, args.runs // 3)),
            }
            loads = []
            with chromium(work / "chrome") as driver:
                for _ in range(args.loads + 1):  # the first load warms the browser's caches
                    driver.get(served.url + "/")
                    rendered = None
                    deadline = time.monotonic() + 60
                    while rendered is None and time.monotonic() < deadline:
                        rendered = driver.execute_script(
                            "const m = performance.getEntriesByName('fleet-rendered')[0]; return m && m.startTime")
                        if rendered is None:
                            time.sleep(0.02)
                    rows = driver.execute_script("return document.getElementById('fleet-table').dataset.rows")
                    assert int(rows) == args.devices, rows
                    loads.append(float(rendered))
                # The table draws the rows in view: scrolled to the end, the last device is there.
                driver.execute_script("const w = document.getElementById('fleet-wrap'); w.scrollTop = w.scrollHeight")
                last = devices[-1].id
                deadline = time.monotonic() + 10
                while not driver.execute_script(f"return !!document.querySelector('tr[data-device=\"{last}\"]')"):
                    assert time.monotonic() < deadline, "the last device never appeared when scrolled to"
                    time.sleep(0.02)
            loads = loads[1:]
            after = proc_status(served.proc.pid)
        finally:
            served.stop()
            broker.stop()
    page_ms = statistics.median(loads)
    result = {
        "devices": args.devices, "fill_s": fill_s, "target_samples_24h": 86400 // 5,
        "page_load_ms": {"median": page_ms, "all": loads, "target_ms": 1000, "ok": page_ms <= 1000},
        "api": api,
        "controller_rss_mb": {"idle": idle.get("VmRSS"), "after": after.get("VmRSS"), "hwm": after.get("VmHWM")},
    }
    print(f"controller web at {args.devices} devices (store filled in {fill_s:.0f} s)")
    print(f"{'measure':44} {'p50 ms':>9} {'p95 ms':>9} {'bytes':>10}")
    for name, r in api.items():
        print(f"{name:44} {r['p50_ms']:9.1f} {r['p95_ms']:9.1f} {r['bytes']:10d}")
    print(f"{'fleet page: navigation to rendered table':44} {page_ms:9.0f}  (target <= 1000 ms; "
          f"{'ok' if page_ms <= 1000 else 'MISSED'}; loads {', '.join(f'{x:.0f}' for x in loads)})")
    print(f"controller RSS: idle {idle.get('VmRSS', 0):.0f} MiB, after {after.get('VmRSS', 0):.0f} MiB, "
          f"high-water {after.get('VmHWM', 0):.0f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
