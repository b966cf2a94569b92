"""A simulated fleet written through the store's ingest path (the same `Store.apply` the MQTT
ingestor calls), with telemetry history, so API, dashboard and bench tests start from data."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from agent.protocol import Event, Reported, Status, TelemetryBatch, TelemetrySample
from agent.protocol.messages import PowerReport
from controller.store import Ingested, Store

BOARDS = ("jetson-orin-nano", "kria-kv260", "raspberry-pi-5", "generic-x86_64")
BUNDLES = ("austen-3m-int8-1.0.0", "austen-3m-int8-1.1.0")


@dataclass(frozen=True)
class SimDevice:
    id: str
    board: str
    bundle: str
    budget_w: float
    online: bool


def devices(n: int, prefix: str = "sim") -> list[SimDevice]:
    return [SimDevice(f"{prefix}-{i:05d}", BOARDS[i % len(BOARDS)], BUNDLES[i % 2], 5.0 + (i % 4) * 2.5,
                      i % 10 != 9) for i in range(n)]


def sample(d: SimDevice, seq: int, ts: float) -> TelemetrySample:
    phase = seq / 30.0 + hash(d.id) % 7
    return TelemetrySample(
        seq=seq, ts=ts, cpu_pct=40 + 30 * math.sin(phase), mem_used_mb=900 + 100 * math.sin(phase / 3),
        mem_total_mb=4096, temp_c=50 + 10 * math.sin(phase / 2), power_w=d.budget_w * (0.7 + 0.25 * math.sin(phase)),
        tokens_per_s=20 + 8 * math.cos(phase), latency_ms=40 + 10 * math.sin(phase), requests=seq % 5,
    )


def state(d: SimDevice, now: float, label: str | None = None) -> list[Ingested]:
    return [
        Ingested(d.id, now, Status(state="online" if d.online else "offline", ts=now, agent_version="0.1.0")),
        Ingested(d.id, now, Reported(device_id=d.id, agent_version="0.1.0", board=label or d.board, ts=now,
                                     accelerators=["cpu"], active_bundle=d.bundle, slot="a", health="ok",
                                     power=PowerReport(budget_w=d.budget_w, draw_w=d.budget_w * 0.8))),
    ]


def history(d: SimDevice, until: float, seconds: float, every_s: float, batch: int = 500) -> Iterator[Ingested]:
    count = int(seconds // every_s)
    samples = [sample(d, seq, until - (count - seq) * every_s) for seq in range(count)]
    for i in range(0, len(samples), batch):
        yield Ingested(d.id, until, TelemetryBatch(device_id=d.id, samples=samples[i:i + batch]))


def events(d: SimDevice, now: float) -> list[Ingested]:
    return [
        Ingested(d.id, now, Event(device_id=d.id, seq=1, ts=now - 120, kind="install.started",
                                  message=f"installing {d.bundle}")),
        Ingested(d.id, now, Event(device_id=d.id, seq=2, ts=now - 60, kind="install.committed",
                                  message="health check passed", details={"bundle": d.bundle, "ok": True})),
    ]


def fill(store: Store, fleet: list[SimDevice], now: float, *, history_s: float = 600, every_s: float = 10) -> None:
    """Every device's state and last sample; `history_s` of telemetry and two events each."""
    items: list[Ingested] = []
    for d in fleet:
        items += state(d, now)
        items += history(d, now, history_s, every_s)
        items += events(d, now)
        if len(items) > 2000:
            store.apply(items)
            items = []
    if items:
        store.apply(items)
