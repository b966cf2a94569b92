"""System telemetry samples (CPU, memory, temperature, power, inference figures)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from agent.protocol.messages import TelemetrySample
from firmware.sensors import PowerReading


@dataclass
class InferenceCounters:
    """Filled by the runtime; read and reset at each sample."""

    tokens: int = 0
    busy_s: float = 0.0
    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0

    def take(self) -> InferenceCounters:
        snapshot = InferenceCounters(
            self.tokens, self.busy_s, self.requests, self.errors, self.latency_ms_sum
        )
        self.tokens = self.requests = self.errors = 0
        self.busy_s = self.latency_ms_sum = 0.0
        return snapshot


def _max_temperature() -> float | None:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    temps = [t.current for readings in sensors.values() for t in readings if t.current is not None]
    return max(temps) if temps else None


class Sampler:
    def __init__(
        self,
        power: Callable[[], PowerReading | None] = lambda: None,
        counters: InferenceCounters | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.power = power
        self.counters = counters or InferenceCounters()
        self.clock = clock
        psutil.cpu_percent(interval=None)  # prime: the first call has no interval to measure

    def sample(self, seq: int) -> TelemetrySample:
        mem = psutil.virtual_memory()
        power = self.power()
        inference = self.counters.take()
        return TelemetrySample(
            seq=seq,
            ts=self.clock(),
            cpu_pct=psutil.cpu_percent(interval=None),
            mem_used_mb=(mem.total - mem.available) / 2**20,
            mem_total_mb=mem.total / 2**20,
            temp_c=_max_temperature(),
            power_w=power.watts if power else None,
            power_estimated=power.estimated if power else False,
            tokens_per_s=(inference.tokens / inference.busy_s) if inference.busy_s > 0 else None,
            latency_ms=(inference.latency_ms_sum / inference.requests) if inference.requests else None,
            requests=inference.requests,
            errors=inference.errors,
        )
