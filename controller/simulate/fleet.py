"""The simulated fleet: device setups split over a few worker processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from controller.simulate.boards import DEFAULT_MIX, assign, parse_mix
from controller.simulate.worker import DeviceSetup, WorkerSpec, WorkerStats, run_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetSpec:
    broker: str
    devices: int
    root: Path  # the trusted root metadata (director keys), as at provisioning
    boards: str = DEFAULT_MIX
    fail_rate: float = 0.0
    offline_rate: float = 0.0
    seed: int = 0
    processes: int = 2
    prefix: str = "sim"
    bundle: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    telemetry_interval_s: float = 2.0
    samples_per_batch: int = 2
    duration_s: float | None = None


def director_keys(root: Path) -> tuple[dict[str, bytes], int]:
    from agent.trust.director import director_keys_from_root
    from agent.trust.errors import SignatureError

    try:
        signed = json.loads(root.read_bytes())["signed"]
        keys = director_keys_from_root(signed)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--root {root}: not a readable TUF root ({e})") from None
    except SignatureError as e:
        raise UsageError(f"--root {root}: {e}") from None
    return dict(keys.keys), keys.threshold


def plan(spec: FleetSpec) -> list[WorkerSpec]:
    if spec.devices < 1:
        raise UsageError(f"--devices: {spec.devices} must be >= 1")
    for name, rate in (("--fail-rate", spec.fail_rate), ("--offline-rate", spec.offline_rate)):
        if not 0 <= rate <= 1:
            raise UsageError(f"{name}: {rate} is outside 0-1")
    if spec.fail_rate + spec.offline_rate > 1:
        raise UsageError("--fail-rate + --offline-rate must not exceed 1")
    mix = parse_mix(spec.boards)
    keys, threshold = director_keys(spec.root)
    rng = random.Random(spec.seed)
    width = max(4, len(str(spec.devices - 1)))
    ids = [f"{spec.prefix}-{i:0{width}d}" for i in range(spec.devices)]
    boards = assign(mix, spec.devices, rng)
    # Exactly round(rate x N) devices fail (or go offline), chosen by the seed.
    order = list(range(spec.devices))
    rng.shuffle(order)
    n_fail = round(spec.fail_rate * spec.devices)
    n_off = round(spec.offline_rate * spec.devices)
    failing = set(order[:n_fail])
    offline = set(order[n_fail:n_fail + n_off])
    setups = [DeviceSetup(ids[i], boards[i], i in failing, i in offline, spec.bundle, dict(spec.labels))
              for i in range(spec.devices)]
    procs = max(1, min(spec.processes, spec.devices))
    return [WorkerSpec(spec.broker, tuple(setups[p::procs]), keys, threshold, spec.seed * 1000 + p,
                       spec.telemetry_interval_s, spec.samples_per_batch, spec.duration_s)
            for p in range(procs)]


def run_fleet(spec: FleetSpec, stats_file: Path | None = None) -> dict[str, Any]:
    """Run until every worker ends (the duration, or SIGTERM/SIGINT to the process group)."""
    workers = plan(spec)
    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=run_worker, args=(w, results), name=f"sim-{i}") for i, w in enumerate(workers)]
    for p in procs:
        p.start()
    log.info("simulating %d devices in %d processes against %s", spec.devices, len(procs), spec.broker)
    collected: list[WorkerStats] = []
    try:
        while len(collected) < len(procs):
            try:
                collected.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()
        while len(collected) < len(procs):
            try:
                collected.append(results.get(timeout=20))  # a worker drains up to 8 s, then says goodbye
            except queue.Empty:
                break
    for p in procs:
        p.join(10)
    total: dict[str, Any] = {k: sum(getattr(s, k) for s in collected) for k in asdict(WorkerStats())}
    total["workers"] = len(procs)
    total["workers_reported"] = len(collected)
    if stats_file is not None:
        stats_file.write_text(json.dumps(total, indent=2) + "\n")
    return total
