"""Whether ONNX Runtime's worker threads spin: a decision from the situation.

Spinning (ORT's default) keeps intra-op workers busy-waiting between parallel sections.
On cores the model has to itself that is ~15 % faster decode (the workers never sleep and
wake); on cores shared with other work the spinning workers fight it and decode gets
~40 % slower, and spinning burns power while it waits (ADR 0011's addendum, ADR 0060).

    decide(situation) -> Decision(spin, reason)     pure, tested exhaustively
    probe() -> Situation                            the adapter: how busy the CPUs are now
    budget_binds(governor decision) -> bool         whether the power budget limits us now
    GovernedKnobs                                   the governor's knobs + that binding state,
                                                    steadied (a change costs a session reload)

Rules, first match wins: an explicit setting (the operator's) is kept; a binding power
budget -> no spin (every watt counts); a board profile that gives the cores to the model
(`cores_dedicated = true`) -> spin; other work on the cores the model needs -> no spin;
otherwise (the cores are the model's) -> spin. The generation queue re-decides before a
request when the binding state changed (agent/runtime/service.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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
    cores_dedicated: bool = False  # the board profile says the cores are the model's


@dataclass(frozen=True)
class Decision:
    spin: bool
    reason: str


def decide(s: Situation) -> Decision:
    if s.requested is not None:
        return Decision(s.requested, "set explicitly")
    if s.budget_binding:
        return Decision(False, "a power budget binds: sleeping workers save power")
    if s.cores_dedicated:
        return Decision(True, "the board profile gives the cores to the model and no power budget binds")
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


def probe(threads: int | None, budget_binding: bool = False, requested: bool | None = None,
          cores_dedicated: bool = False) -> Situation:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    measured = requested is None and not budget_binding and not cores_dedicated
    others = busy_cores() if measured else 0.0
    # ORT's default intra-op pool is one thread per physical core it may use
    return Situation(cpu_count=cpus, threads=threads or cpus, others_busy_cores=others,
                     budget_binding=budget_binding, requested=requested, cores_dedicated=cores_dedicated)


def choose(threads: int | None, budget_binding: bool = False, requested: bool | None = None,
           cores_dedicated: bool = False) -> Decision:
    decision = decide(probe(threads, budget_binding, requested, cores_dedicated))
    log.info("ORT worker threads %s: %s", "spin" if decision.spin else "sleep", decision.reason)
    return decision


# -- the power governor's side -------------------------------------------------------------


class GovernorDecision(Protocol):
    """What `budget_binds` reads of the governor's last decision (firmware.governor.Decision fits)."""

    @property
    def budget_w(self) -> float | None: ...

    @property
    def throttled(self) -> bool: ...


def budget_binds(decision: GovernorDecision | None) -> bool:
    """A budget is set and the governor holds the runtime below its fastest setting (fewer
    threads, a lower mode, pacing or held admission). No decision yet: not binding."""
    return decision is not None and decision.budget_w is not None and decision.throttled


class SteadyFlag:
    """A reading that changes its answer only after the new value held for `hold_s`: the
    governor can hover at the edge of its budget, and each change of spinning costs a
    session reload. The first reading is taken as it is."""

    def __init__(self, read: Callable[[], bool], hold_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.hold_s = hold_s
        self.clock = clock
        self._value: bool | None = None
        self._since: float | None = None  # when the reading first differed from the value

    def __call__(self) -> bool:
        raw = self.read()
        if self._value is None:
            self._value = raw
        if raw == self._value:
            self._since = None
            return self._value
        now = self.clock()
        if self._since is None:
            self._since = now
        if now - self._since >= self.hold_s:
            self._value, self._since = raw, None
        return self._value


class Knobs(Protocol):
    """What the power governor sets (firmware.knobs.RuntimeKnobs fits)."""

    @property
    def threads(self) -> int: ...

    @property
    def admit(self) -> bool: ...

    def pace_delay(self, step_s: float) -> float: ...


class GovernedKnobs:
    """The governor's runtime knobs (threads, admission, pacing) plus `budget_binding`, which
    the generation queue follows with ORT's spinning. The daemon builds one (agent/daemon.py)."""

    def __init__(self, knobs: Knobs, binding: Callable[[], bool]) -> None:
        self.knobs = knobs
        self._binding = binding

    @property
    def threads(self) -> int:
        return self.knobs.threads

    @property
    def admit(self) -> bool:
        return self.knobs.admit

    def pace_delay(self, step_s: float) -> float:
        return self.knobs.pace_delay(step_s)

    @property
    def budget_binding(self) -> bool:
        return self._binding()
