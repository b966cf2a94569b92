"""Benchmark: the controller's fleet operations at scale (issue 11).

1. Ingest: telemetry from `fleetgen simulate --devices 5000` through a real Mosquitto
   (started here on a free port). Measured over the same window: samples the controller's
   ingest (`fleetgen serve`, its own process) has committed to the store per second, and
   samples per second a raw paho subscriber (its own process; it only counts what it
   receives) gets from the same broker. The ratio is the target (>= 0.5, and >= 10,000
   samples/s with SQLite on the 2-core machine). Then the simulator stops and the bench
   waits for the store to hold exactly what the simulator sent: nothing lost, nothing doubled.
   Run once with SQLite and once with PostgreSQL (a schema the bench creates and drops).
2. Rollout: 1,000 simulated devices, `fleetgen rollout start` to a group of all of them
   (waves 1,10%,50%,100%): seconds from the start until all 1,000 committed with no
   failures, and the controller's CPU and memory meanwhile (from /proc).

    python tests/bench/controller.py [--devices 5000] [--window 20] [--interval 2]
                                     [--samples-per-batch 10] [--rollout-devices 1000]
                                     [--pg URL | --no-pg] [--out FILE]

Prints a table and writes tests/bench/results/controller.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from controller.demo.brokers import Mosquitto  # noqa: E402
from tests.controller.fleetworld import FleetWorld, make_repo, wait_until  # noqa: E402


class BenchWorld(FleetWorld):
    """The test fleet's controller with the default MQTT keepalive (30 s): the tests' 5 s
    is for noticing a killed broker quickly, not for a link this busy on a shared machine."""

    def controller_config(self, name: str, db_url: str | None = None) -> Path:
        path = super().controller_config(name, db_url)
        path.write_text(path.read_text().replace("keepalive = 5\n", "keepalive = 30\n"))
        return path


RESULTS = ROOT / "tests" / "bench" / "results" / "controller.json"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the raw subscriber: a baseline that only counts ---------------------------------------


class Samples(msgspec.Struct):
    samples: list[msgspec.Raw]  # not decoded: the baseline only counts them


def raw_counter(port: int, counts: Any, ready: Any) -> None:
    """Subscribe to every device's telemetry (QoS 1, like the controller) and count samples."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    decoder = msgspec.json.Decoder(Samples)

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.subscribe("fleetgen/v1/dev/+/telemetry", qos=1)

    def on_subscribe(*_: Any) -> None:
        ready.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        n = len(decoder.decode(message.payload).samples)
        counts[0] += 1
        counts[1] += n

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-counter", protocol=paho.MQTTv5)
    client.on_connect, client.on_message, client.on_subscribe = on_connect, on_message, on_subscribe
    client.connect("127.0.0.1", port, 30)
    client.loop_forever()


# -- /proc ----------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def mem_mb(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


@dataclass
class Sampler:
    """CPU share and peak RSS of one process between `start()` and `stop()`."""

    pid: int
    t0: float = 0.0
    c0: float = 0.0
    peak_rss: float = 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), cpu_s(self.pid)

    def poll(self) -> None:
        self.peak_rss = max(self.peak_rss, mem_mb(self.pid).get("VmRSS", 0.0))

    def stop(self) -> dict[str, float]:
        self.poll()
        wall = time.monotonic() - self.t0
        return {"cpu_pct": 100 * (cpu_s(self.pid) - self.c0) / wall, "rss_peak_mb": self.peak_rss,
                "hwm_mb": mem_mb(self.pid).get("VmHWM", 0.0)}


def stored(world: FleetWorld) -> int:
    from sqlalchemy import func, select

    from controller.store.core import TelemetryRow

    def count(s: Any) -> int:
        with s.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(TelemetryRow)).scalar() or 0)

    return world.query(count)


# -- 1. ingest --------------------------------------------------------------------------------


def ingest(work: Path, repo: Path, db_url: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    # Production-like persistence (Mosquitto's default autosave_interval is 1800 s; the test
    # fixture saves every second), and room for the controller's backlog while it catches up.
    broker = Mosquitto(workdir=work / "mosquitto", extra_conf="autosave_interval 1800\nmax_queued_messages 200000")
    broker.start()
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("q", 2, lock=False)
    ready = ctx.Event()
    raw = ctx.Process(target=raw_counter, args=(broker.port, counts, ready), daemon=True)
    raw.start()
    world = BenchWorld(work, broker.url, repo, db_url=db_url)
    try:
        assert ready.wait(30), "the raw subscriber did not subscribe"
        world.start_controller()
        wait_until("controller connected", lambda: "connected to" in world.log("controller"), 60,
                   alive=world.check_alive)
        stats = work / "sim-stats.json"
        t_start = time.monotonic()
        world.start_fleet(args.devices, "--telemetry-interval", str(args.interval), "--samples-per-batch",
                          str(args.samples_per_batch), "--duration", str(args.duration),
                          "--processes", str(args.processes), "--stats", str(stats))
        world.wait_online(args.devices, timeout=600)  # 5,000 connections on a busy machine take a while
        online_s = time.monotonic() - t_start
        time.sleep(args.interval * 2)  # every device has started its telemetry cycle
        pid = world.procs["controller"].pid
        sampler = Sampler(pid)
        assert raw.pid is not None
        raw_sampler = Sampler(raw.pid)
        raw0, stored0, t0 = counts[1], stored(world), time.monotonic()
        sampler.start()
        raw_sampler.start()
        while time.monotonic() - t0 < args.window:
            time.sleep(1)
            sampler.poll()
            world.check_alive()
        raw1, stored1, t1 = counts[1], stored(world), time.monotonic()
        usage = sampler.stop()
        raw_usage = raw_sampler.stop()
        window = t1 - t0
        print(f"  {label}: stored {(stored1 - stored0) / window:,.0f}/s, raw {(raw1 - raw0) / window:,.0f}/s "
              f"over {window:.0f} s; stopping the simulator", file=sys.stderr)
        world.kill("simulate", signal.SIGTERM)  # it says offline and writes its stats
        sent = int(json.loads(stats.read_text())["samples_sent"])
        # The controller drains what the broker queued for it; stop waiting once it stalls.
        t_drain = last_change = time.monotonic()
        final = stored(world)
        while final < sent and time.monotonic() - last_change < 30:
            time.sleep(1)
            world.check_alive()
            now_stored = stored(world)
            if now_stored != final:
                final, last_change = now_stored, time.monotonic()
        drain_s = time.monotonic() - t_drain
        raw_total = counts[1]
    finally:
        world.stop()
        raw.kill()
        broker.stop()
    samples_per_s = (stored1 - stored0) / window
    raw_per_s = (raw1 - raw0) / window
    return {
        "db": label, "devices": args.devices, "offered_samples_per_s": args.devices * args.samples_per_batch
        / args.interval, "window_s": window, "online_after_s": online_s,
        "samples_per_s": samples_per_s, "raw_samples_per_s": raw_per_s,
        "ratio_to_raw": samples_per_s / raw_per_s if raw_per_s else 0.0,
        "samples_sent": sent, "samples_stored": final, "raw_received": raw_total,
        "lost": sent - final if final < sent else 0, "doubled": final - sent if final > sent else 0,
        "drain_s": drain_s, "controller": usage, "raw_subscriber": raw_usage,
        # What each got done per second of CPU it was given: on a machine shared with other work
        # the rates above also measure each process's share of the cores.
        "samples_per_cpu_s": samples_per_s / (usage["cpu_pct"] / 100) if usage["cpu_pct"] else 0.0,
        "raw_samples_per_cpu_s": raw_per_s / (raw_usage["cpu_pct"] / 100) if raw_usage["cpu_pct"] else 0.0,
    }


def pg_database(url: str) -> tuple[str, Any] | None:
    """A fresh schema on the PostgreSQL at `url` and the engine that drops it; None if none."""
    from sqlalchemy import create_engine, text

    admin = create_engine(url)
    try:
        with admin.begin() as c:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            c.execute(text(f"create schema {schema}"))
    except Exception as e:
        print(f"PostgreSQL at {url}: {type(e).__name__}: {e}; skipped", file=sys.stderr)
        admin.dispose()
        return None
    return schema, admin


# -- 2. rollout -------------------------------------------------------------------------------


def rollout(work: Path, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    broker = Mosquitto(workdir=work / "mosquitto")
    broker.start()
    world = BenchWorld(work, broker.url, repo)
    try:
        world.start_controller()
        world.start_fleet(args.rollout_devices, "--processes", str(args.processes))
        world.wait_online(args.rollout_devices, timeout=300)
        world.ok("group", "create", "all")
        world.ok("group", "add", "all", "--board", "jetson-orin-nano", "--board", "raspberry-pi-5",
                 "--board", "kria-kv260", "--board", "generic-x86_64")
        pid = world.procs["controller"].pid
        sampler = Sampler(pid)
        sampler.start()
        t0 = time.monotonic()
        out = world.ok("rollout", "start", "tiny-2.0.0.fgb", "--to", "all", "--repo", str(world.repo),
                       "--waves", "1,10%,50%,100%", "--max-failures", "0%", "--wave-timeout", "10m", "--json")
        rollout_id = int(json.loads(out)["rollout"]["id"])
        waves: list[float] = []

        def done() -> Any:
            sampler.poll()
            view = world.rollout(rollout_id)
            while len(waves) < view.current_wave:
                waves.append(time.monotonic() - t0)
            return view if view.status in ("completed", "halted", "aborted") else None

        view = wait_until(f"rollout {rollout_id} finished", done, 600, alive=world.check_alive)
        seconds = time.monotonic() - t0
        usage = sampler.stop()
    finally:
        world.stop()
        broker.stop()
    return {"devices": args.rollout_devices, "status": view.status, "counts": view.counts(),
            "seconds": seconds, "wave_sizes": [len(w) for w in view.plan], "wave_started_s": waves,
            "controller": usage}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--interval", type=float, default=2.0, help="telemetry interval of each device (s)")
    ap.add_argument("--samples-per-batch", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0, help="measurement window (s)")
    ap.add_argument("--processes", type=int, default=2, help="simulator worker processes")
    ap.add_argument("--rollout-devices", type=int, default=1000)
    ap.add_argument("--pg", default=PG_URL, help="PostgreSQL server URL")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--skip", action="append", default=[], choices=("sqlite", "pg", "rollout"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.duration = 3600.0  # the simulator is stopped after the window
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start "
                                         "(shared with other work)"}
    with tempfile.TemporaryDirectory(prefix="fleetgen-bench-controller-") as tmp:
        work = Path(tmp)
        repo = make_repo(work)
        if "sqlite" not in args.skip:
            result["ingest"] = ingest(work / "sqlite", repo, f"sqlite:///{work / 'sqlite' / 'controller.db'}",
                                      args, "sqlite")
        if "pg" not in args.skip and not args.no_pg:
            made = pg_database(args.pg)
            if made is not None:
                schema, admin = made
                try:
                    result["ingest_postgresql"] = ingest(work / "pg", repo,
                                                         f"{args.pg}?options=-csearch_path%3D{schema}",
                                                         args, "postgresql")
                finally:
                    from sqlalchemy import text

                    with admin.begin() as c:
                        c.execute(text(f"drop schema {schema} cascade"))
                    admin.dispose()
        if "rollout" not in args.skip:
            result["rollout"] = rollout(work / "rollout", repo, args)
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def report(result: dict[str, Any]) -> None:
    print(f"controller bench ({result['machine']})")
    for key in ("ingest", "ingest_postgresql"):
        r = result.get(key)
        if not r:
            continue
        ok = r["ratio_to_raw"] >= 0.5 and (r["db"] != "sqlite" or r["samples_per_s"] >= 10_000)
        print(f"ingest, {r['db']:10}  {r['devices']} devices, offered {r['offered_samples_per_s']:,.0f} samples/s, "
              f"window {r['window_s']:.0f} s")
        print(f"  stored by the controller  {r['samples_per_s']:10,.0f} samples/s")
        print(f"  raw paho subscriber       {r['raw_samples_per_s']:10,.0f} samples/s")
        target = "target >= 0.5" + (", >= 10,000/s" if r["db"] == "sqlite" else "")
        print(f"  ratio to raw              {r['ratio_to_raw']:10.2f}   ({target}: {'ok' if ok else 'MISSED'})")
        print(f"  sent {r['samples_sent']:,}, stored {r['samples_stored']:,} (lost {r['lost']}, doubled "
              f"{r['doubled']}), drained {r['drain_s']:.1f} s after the simulator stopped")
        c, w = r["controller"], r["raw_subscriber"]
        print(f"  controller CPU {c['cpu_pct']:.0f}% of a core, RSS peak {c['rss_peak_mb']:.0f} MiB; "
              f"raw subscriber CPU {w['cpu_pct']:.0f}%")
        print(f"  per CPU-second: controller {r['samples_per_cpu_s']:,.0f} samples, raw "
              f"{r['raw_samples_per_cpu_s']:,.0f}")
    r = result.get("rollout")
    if r:
        c = r["controller"]
        print(f"rollout to {r['devices']} devices: {r['status']} {r['counts']} in {r['seconds']:.1f} s "
              f"(waves {r['wave_sizes']}, started at {', '.join(f'{s:.1f}' for s in r['wave_started_s'])} s)")
        print(f"  controller CPU {c['cpu_pct']:.0f}% of a core, RSS peak {c['rss_peak_mb']:.0f} MiB, "
              f"high-water {c['hwm_mb']:.0f} MiB")
    ingest_r = result.get("ingest")
    if ingest_r:  # the keys the issue names, at the top level of the JSON too
        result["ingest.samples_per_s"] = ingest_r["samples_per_s"]
        result["ingest.raw_samples_per_s"] = ingest_r["raw_samples_per_s"]
        result["ingest.ratio_to_raw"] = ingest_r["ratio_to_raw"]


if __name__ == "__main__":
    sys.exit(main())
