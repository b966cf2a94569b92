"""Whether ONNX Runtime's worker threads spin: a decision from the situation.

Spinning (ORT's default) keeps intra-op workers busy-waiting between parallel sections.
On cores the model has to itself that is ~15 % faster decode (the workers never sleep and
wake); on cores shared with other work the spinning workers fight it and decode gets
~40 % slower, and spinning burns power while it waits (ADR 0011's addendum, ADR 0060).

    decide(situation) -> Decision(spin, reason)     pure, tested exhaustively
    probe() -> Situation                            the adapter: how busy the CPUs are now

Rules, first match wins: an explicit setting (the operator's, or the power governor's when
a budget binds) is kept; a binding power budget -> no spin (every watt counts); other work
on the cores the model needs -> no spin; otherwise (the cores are the model's) -> spin.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Other processes may use this much CPU (in cores) beyond what the model leaves free and the
# cores still count as the model's: a shell, journald and the agent's own loop are not "load".
IDLE_SLACK_CORES = 0.25
PROBE_S = 0.2


@dataclass(frozen=True)
class Situation:
    cpu_count: int
    threads: int  # intra-op threads the session will use
    others_busy_cores: float  # CPU the rest of the machine used just now, in cores
    budget_binding: bool = False
    requested: bool | None = None  # an explicit setting wins


@dataclass(frozen=True)
class Decision:
    spin: bool
    reason: str


def decide(s: Situation) -> Decision:
    if s.requested is not None:
        return Decision(s.requested, "set explicitly")
    if s.budget_binding:
        return Decision(False, "a power budget binds: sleeping workers save power")
    free = s.cpu_count - s.others_busy_cores
    if s.threads > free + IDLE_SLACK_CORES:
        return Decision(False, f"cores are shared: others use {s.others_busy_cores:.1f} of {s.cpu_count}, "
                               f"the model wants {s.threads}")
    return Decision(True, f"the cores are the model's ({s.threads} threads, others use "
                          f"{s.others_busy_cores:.1f} of {s.cpu_count})")


def busy_cores(interval_s: float = PROBE_S) -> float:
    """CPU used by everything over `interval_s`, in cores (psutil; /proc/stat on Linux)."""
    import psutil

    psutil.cpu_percent(interval=None)
    percent = psutil.cpu_percent(interval=interval_s)
    return float(percent) / 100 * (psutil.cpu_count() or 1)


def probe(threads: int | None, budget_binding: bool = False, requested: bool | None = None) -> Situation:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = 0.0 if requested is not None or budget_binding else busy_cores()
    # ORT's default intra-op pool is one thread per physical core it may use
    return Situation(cpu_count=cpus, threads=threads or cpus, others_busy_cores=others,
                     budget_binding=budget_binding, requested=requested)


def choose(threads: int | None, budget_binding: bool = False, requested: bool | None = None) -> Decision:
    decision = decide(probe(threads, budget_binding, requested))
    log.info("ORT worker threads %s: %s", "spin" if decision.spin else "sleep", decision.reason)
    return decision
