"""The API's counters: percentiles, Prometheus text, and what reaches the telemetry samples."""

from __future__ import annotations

from agent.api.metrics import ApiMetrics, percentile
from agent.telemetry import InferenceCounters


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0


def test_generations_and_errors_feed_the_telemetry_counters() -> None:
    sink = InferenceCounters()
    m = ApiMetrics(sink=sink)
    m.generation_done(prompt_tokens=7, completion_tokens=20, busy_s=0.5, latency_ms=510.0)
    m.request_done("completions", 200, 510.0)
    m.request_done("chat", 400, 1.0)
    m.request_done("health", 503, 0.1)  # not a generation route: no telemetry error
    m.request_done("completions", 429, 0.2)
    m.disconnected()
    taken = sink.take()
    assert (taken.tokens, taken.requests, taken.errors, taken.busy_s, taken.latency_ms_sum) == (20, 1, 2, 0.5, 510.0)
    snap = m.snapshot(queue_depth=3)
    assert (snap.requests, snap.errors, snap.rejected_full, snap.client_disconnects) == (4, 3, 1, 1)
    assert (snap.prompt_tokens, snap.completion_tokens, snap.queue_depth) == (7, 20, 3)
    assert snap.latency_ms_p50 == 510.0  # refusals do not count as latency samples
    text = m.prometheus(queue_depth=3, ready=True)
    assert 'fleetgen_api_requests_total{route="chat",status="400"} 1' in text
    assert "fleetgen_api_client_disconnects_total 1" in text and "fleetgen_api_queue_depth 3" in text
