"""Prometheus `/metrics`: fleet gauges read from the store at scrape time, ingest counters.

Labels are bounded: `device` and `board` on per-device series, `board`/`state` on counts;
nothing a device could vary at will (bundle names, messages) becomes a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.protocol import TelemetryBatch
from controller.store import ApplyResult, Ingested, Store
from controller.web import queries


class MeteredStore(Store):
    """The store as the ingestor sees it, counting what it writes and how late."""

    def __init__(self, url: str, *, create: bool = True, clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, create=create)
        self._clock = clock
        self._meter_lock = threading.Lock()
        self.messages = 0
        self.samples = 0
        self.lag_s = 0.0

    def apply(self, batch: Sequence[Ingested]) -> ApplyResult:
        result = super().apply(batch)
        samples = sum(len(i.message.samples) for i in batch if isinstance(i.message, TelemetryBatch))
        oldest = min((i.received for i in batch), default=self._clock())
        with self._meter_lock:
            self.messages += len(batch)
            self.samples += samples
            # Time from the oldest message's arrival to its commit: queueing plus the write.
            self.lag_s = max(0.0, self._clock() - oldest)
        return result


class FleetCollector(Collector):
    def __init__(self, store: Store, refused: Callable[[], Mapping[str, int]]) -> None:
        self.store = store
        self.refused = refused

    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily("fleetgen_devices", "Devices known to the controller", labels=["board", "state"])
        for board, online, count in queries.boards_and_status(self.store):
            devices.add_metric([board, "online" if online else "offline"], count)
        yield devices
        per_device = {
            "power_w": GaugeMetricFamily("fleetgen_device_power_watts", "Measured or estimated draw",
                                         labels=["device", "board"]),
            "budget_w": GaugeMetricFamily("fleetgen_device_power_budget_watts", "Power budget in force",
                                          labels=["device", "board"]),
            "tokens_per_s": GaugeMetricFamily("fleetgen_device_tokens_per_second", "Generation speed",
                                              labels=["device", "board"]),
            "temp_c": GaugeMetricFamily("fleetgen_device_temperature_celsius", "Temperature",
                                        labels=["device", "board"]),
        }
        up = GaugeMetricFamily("fleetgen_device_online", "1 when the device is online",
                                   labels=["device", "board"])
        for d in queries.latest_figures(self.store):
            labels = [d.id, d.board]
            up.add_metric(labels, 1.0 if d.online else 0.0)
            for attr, family in per_device.items():
                value = getattr(d, attr)
                if value is not None:
                    family.add_metric(labels, value)
        yield up
        yield from per_device.values()
        refused = CounterMetricFamily("fleetgen_ingest_refused", "Device messages (or samples) ingest refused",
                                      labels=["reason"])
        for reason, count in sorted(self.refused().items()):
            refused.add_metric([reason], count)
        yield refused
        rollouts = GaugeMetricFamily("fleetgen_rollouts", "Rollouts by status", labels=["status"])
        progress = GaugeMetricFamily("fleetgen_rollout_devices", "Devices of unfinished rollouts by result",
                                     labels=["result"])
        results: dict[str, int] = {}
        statuses: dict[str, int] = {}
        repo = self.store.repos.rollouts
        for view in repo.list():
            statuses[view.status] = statuses.get(view.status, 0) + 1
        for rollout_id in repo.active():
            for result, n in repo.get(rollout_id).counts().items():
                results[result] = results.get(result, 0) + n
        for status, n in sorted(statuses.items()):
            rollouts.add_metric([status], n)
        for result, n in sorted(results.items()):
            progress.add_metric([result], n)
        yield rollouts
        yield progress
        if isinstance(self.store, MeteredStore):
            yield CounterMetricFamily("fleetgen_ingest_messages", "Device messages written to the store",
                                      value=self.store.messages)
            yield CounterMetricFamily("fleetgen_telemetry_samples_ingested", "Telemetry samples received",
                                      value=self.store.samples)
            yield GaugeMetricFamily("fleetgen_ingest_lag_seconds",
                                    "Arrival to commit of the last written batch", value=self.store.lag_s)


class RequestMetrics:
    """ASGI middleware: requests and their duration by route template (bounded: the app's
    own routes, "unmatched" for everything else), method and status code."""

    def __init__(self, app: ASGIApp, reg: CollectorRegistry, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.clock = clock
        self.requests = Counter("fleetgen_http_requests", "HTTP requests answered", ["route", "method", "code"],
                                registry=reg)
        self.duration = Histogram("fleetgen_http_request_duration_seconds", "Time to answer", ["route"],
                                  registry=reg, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        code = 500

        async def watch(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.requests.labels(route, method, str(code)).inc()
            self.duration.labels(route).observe(self.clock() - start)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def registry(store: Store, refused: Callable[[], Mapping[str, int]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(store, refused))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
