"""Request counters of the local API: totals, latency percentiles, Prometheus text.

Touched only from the API's event loop, read from other threads through `snapshot()`
(under a lock). Labels are a fixed, small set (route, status class), never per client.
With `sink` set (the daemon's `telemetry.InferenceCounters`), each finished generation
also feeds the telemetry samples the daemon publishes.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from typing import Protocol

import msgspec

_WINDOW = 1024  # the latencies percentiles are computed over (most recent requests)
ROUTES = ("completions", "chat", "images", "models", "health", "metrics", "status", "other")


class CounterSink(Protocol):
    """What telemetry.InferenceCounters offers."""

    tokens: int
    busy_s: float
    requests: int
    errors: int
    latency_ms_sum: float


class ApiCounters(msgspec.Struct, frozen=True, kw_only=True):
    """What `status --json` and telemetry show."""

    requests: int
    errors: int  # responses with status >= 400 (refusals included)
    rejected_full: int  # 429: the queue was full
    client_disconnects: int  # generations stopped because the client went away
    prompt_tokens: int
    completion_tokens: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ttft_ms_p50: float | None
    queue_depth: int
    in_flight: int


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class ApiMetrics:
    def __init__(self, sink: CounterSink | None = None) -> None:
        self.sink = sink
        self._lock = threading.Lock()
        self.by_route: dict[tuple[str, int], int] = {}
        self.rejected_full = 0
        self.client_disconnects = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0
        self._latency: deque[float] = deque(maxlen=_WINDOW)
        self._ttft: deque[float] = deque(maxlen=_WINDOW)

    def request_done(self, route: str, status: int, latency_ms: float | None) -> None:
        key = (route if route in ROUTES else "other", status)
        with self._lock:
            self.by_route[key] = self.by_route.get(key, 0) + 1
            if status == 429:
                self.rejected_full += 1
            if latency_ms is not None and status < 400 and route in ("completions", "chat", "images"):
                self._latency.append(latency_ms)
            if self.sink is not None and status >= 400 and route in ("completions", "chat", "images"):
                self.sink.errors += 1

    def generation_done(self, prompt_tokens: int, completion_tokens: int, busy_s: float, latency_ms: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if self.sink is not None:
                self.sink.tokens += completion_tokens
                self.sink.busy_s += busy_s
                self.sink.requests += 1
                self.sink.latency_ms_sum += latency_ms

    def first_token(self, ttft_ms: float) -> None:
        with self._lock:
            self._ttft.append(ttft_ms)

    def disconnected(self) -> None:
        with self._lock:
            self.client_disconnects += 1

    def snapshot(self, queue_depth: int = 0) -> ApiCounters:
        with self._lock:
            total = sum(self.by_route.values())
            errors = sum(n for (_, status), n in self.by_route.items() if status >= 400)
            return ApiCounters(
                requests=total,
                errors=errors,
                rejected_full=self.rejected_full,
                client_disconnects=self.client_disconnects,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                latency_ms_p50=_round(percentile(self._latency, 50)),
                latency_ms_p95=_round(percentile(self._latency, 95)),
                ttft_ms_p50=_round(percentile(self._ttft, 50)),
                queue_depth=queue_depth,
                in_flight=self.in_flight,
            )

    def prometheus(self, queue_depth: int, ready: bool) -> str:
        snap = self.snapshot(queue_depth)
        with self._lock:
            by_route = sorted(self.by_route.items())
        lines = [
            "# HELP fleetgen_api_requests_total API requests answered, by route and status.",
            "# TYPE fleetgen_api_requests_total counter",
            *(f'fleetgen_api_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in by_route),
            "# HELP fleetgen_api_tokens_total Tokens processed, by kind.",
            "# TYPE fleetgen_api_tokens_total counter",
            f'fleetgen_api_tokens_total{{kind="prompt"}} {snap.prompt_tokens}',
            f'fleetgen_api_tokens_total{{kind="completion"}} {snap.completion_tokens}',
            "# HELP fleetgen_api_client_disconnects_total Generations stopped because the client went away.",
            "# TYPE fleetgen_api_client_disconnects_total counter",
            f"fleetgen_api_client_disconnects_total {snap.client_disconnects}",
            "# HELP fleetgen_api_rejected_total Requests refused with 429 (queue full).",
            "# TYPE fleetgen_api_rejected_total counter",
            f"fleetgen_api_rejected_total {snap.rejected_full}",
            "# HELP fleetgen_api_queue_depth Requests waiting for the model.",
            "# TYPE fleetgen_api_queue_depth gauge",
            f"fleetgen_api_queue_depth {queue_depth}",
            "# HELP fleetgen_api_in_flight Requests being handled.",
            "# TYPE fleetgen_api_in_flight gauge",
            f"fleetgen_api_in_flight {snap.in_flight}",
            "# HELP fleetgen_api_model_ready 1 when a model is loaded and serving.",
            "# TYPE fleetgen_api_model_ready gauge",
            f"fleetgen_api_model_ready {int(ready)}",
            "# HELP fleetgen_api_latency_ms Request latency over the last requests (generation routes).",
            "# TYPE fleetgen_api_latency_ms summary",
        ]
        for q, value in (("0.5", snap.latency_ms_p50), ("0.95", snap.latency_ms_p95)):
            if value is not None:
                lines.append(f'fleetgen_api_latency_ms{{quantile="{q}"}} {value}')
        return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
