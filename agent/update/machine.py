"""The update lifecycle as a pure table: `step(state, event) -> (state, actions)`.

No I/O, no clock, no randomness: the worker (agent/update/worker.py) persists the new
state in the journal *before* it performs the actions, feeds each action's outcome back
as an event, and supplies the jitter a retry needs. Mender's state machine is the model;
the loop counter (`trial_attempts`, persisted) is what breaks restart loops: a bundle
that kills the agent during its trial is rolled back after `MAX_TRIAL_ATTEMPTS` starts.

    idle ──Desired──▶ checking ──Clear──▶ downloading ──Downloaded──▶ unpacking
      ▲                 │ Blocked ▲                                       │ Unpacked
      │                 ▼         │ Recheck                               ▼
      │              waiting ─────┘                                   switching
      │                                                                   │ Switched
      ├──Committed── committing ◀──HealthPassed── trial ◀─────────────────┘
      └─RolledBack── rolling_back ◀──HealthFailed─┘

A failure (transport, slow retrieval) before the switch schedules a retry with
exponential backoff and jitter, at most `max_retries` times; a refusal (a check failed)
ends the update at once.

A newer Desired (another target, or none) cancels the update at any step:
- before the switch: what was fetched or unpacked is discarded, the new target starts;
- switching or on trial: the trial is abandoned and `current` rolled back to `previous`
  (`cancelling`; the health check in flight is killed by the worker), then the new target
  starts (`pending`), unless it *is* the previous bundle, which the rollback restores.
  With no previous bundle (a first install) the trial runs on and the new target waits
  as `pending`: a cancel never leaves a device without a model;
- committing or rolling back: those finish (one rename each), then `pending` starts.
So a device is never left between two bundles, and never waits out a trial it no longer
wants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from agent.protocol.messages import Scalar
from agent.trust.target import Target

Phase = Literal[
    "idle", "checking", "waiting", "downloading", "unpacking", "switching", "trial",
    "committing", "rolling_back",
]
# Phases after which the device runs (or may run) the new bundle: no cancelling there.
AFTER_SWITCH: frozenset[str] = frozenset({"switching", "trial", "committing", "rolling_back"})
BEFORE_SWITCH: frozenset[str] = frozenset({"checking", "waiting", "downloading", "unpacking"})

MAX_TRIAL_ATTEMPTS = 3


class UpdateState(msgspec.Struct, kw_only=True, frozen=True):
    """The journal's content: everything the lifecycle knows, and nothing else does."""

    schema: int = 1
    phase: Phase = "idle"
    director_version: int = 0
    target: Target | None = None
    # Directory names under bundles/ (set once known): the unpacked new bundle and the
    # one `current` named before the switch.
    bundle: str | None = None
    previous: str | None = None
    trial_attempts: int = 0
    retries: int = 0
    wait_reason: str | None = None
    last_error: str | None = None
    last_result: Literal["committed", "rolled_back", "refused", "failed", "cancelled"] | None = None
    pending: Target | None = None
    pending_version: int = 0
    # A newer document abandoned this trial: the rollback that follows ends as "cancelled".
    cancelling: bool = False
    # The desired document's `config` (update conditions among it), kept for a restart.
    config: dict[str, Scalar] = {}
    pending_config: dict[str, Scalar] = {}


# -- events (outcomes fed back by the worker) ----------------------------------------


@dataclass(frozen=True)
class Boot:
    """The agent (re)started: resume whatever the journal says was in progress."""


@dataclass(frozen=True)
class Desired:
    """A verified director document naming `target` (None: nothing to install)."""

    version: int
    target: Target | None
    current_sha256: str | None  # sha256 of the bundle `current` names, when known
    config: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Blocked:
    reason: str
    check: str = ""  # the condition: window, battery, disk (free space, rechecked), drain


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Recheck:
    """A wait or a retry delay is over."""


@dataclass(frozen=True)
class Downloaded:
    pass


@dataclass(frozen=True)
class Unpacked:
    bundle: str
    previous: str | None


@dataclass(frozen=True)
class AlreadyCurrent:
    """Unpacking found the bundle already current (nothing to switch)."""


@dataclass(frozen=True)
class Switched:
    pass


@dataclass(frozen=True)
class HealthPassed:
    details: dict[str, Scalar]


@dataclass(frozen=True)
class HealthFailed:
    reason: str
    details: dict[str, Scalar]


@dataclass(frozen=True)
class Committed:
    pass


@dataclass(frozen=True)
class RolledBack:
    pass


@dataclass(frozen=True)
class Failed:
    """A failure that may heal (transport, slow retrieval): retried. `jitter` in [0, 1)."""

    error: str
    check: str
    jitter: float = 0.5


@dataclass(frozen=True)
class Refused:
    """A check failed: final for this target."""

    error: str
    check: str


UpdateEvent = (
    Boot | Desired | Blocked | Clear | Recheck | Downloaded | Unpacked | AlreadyCurrent | Switched
    | HealthPassed | HealthFailed | Committed | RolledBack | Failed | Refused
)

# -- actions (what the worker does next) ---------------------------------------------


@dataclass(frozen=True)
class CheckConditions:
    pass


@dataclass(frozen=True)
class Download:
    pass


@dataclass(frozen=True)
class Unpack:
    pass


@dataclass(frozen=True)
class Switch:
    pass


@dataclass(frozen=True)
class RunHealthCheck:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Rollback:
    pass


@dataclass(frozen=True)
class Discard:
    """Remove what a cancelled or refused update left (partial download, unpacked bundle)."""

    bundle: str | None


@dataclass(frozen=True)
class WaitFor:
    """Feed `Recheck` after `seconds` (or earlier, when a newer desired document arrives)."""

    seconds: float


@dataclass(frozen=True)
class Emit:
    kind: str
    message: str = ""
    level: Literal["info", "warning", "error"] = "info"
    details: dict[str, Scalar] | None = None


Action = (
    CheckConditions | Download | Unpack | Switch | RunHealthCheck | Commit | Rollback | Discard
    | WaitFor | Emit
)


@dataclass(frozen=True)
class Policy:
    max_retries: int = 5
    backoff_base_s: float = 10.0
    backoff_max_s: float = 900.0
    recheck_s: float = 60.0
    max_trial_attempts: int = MAX_TRIAL_ATTEMPTS


def backoff_s(policy: Policy, attempt: int, jitter: float) -> float:
    """Exponential backoff with full jitter in its upper half: base * 2^(attempt-1), capped,
    times a factor in [0.5, 1), so a fleet that failed together does not retry together."""
    raw = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** max(0, attempt - 1))
    return raw * (0.5 + 0.5 * min(max(jitter, 0.0), 0.999))


def _label(t: Target | None) -> str:
    return t.path if t is not None else "(none)"


def _details(s: UpdateState, **extra: Scalar) -> dict[str, Scalar]:
    d: dict[str, Scalar] = {"target": _label(s.target), "director_version": s.director_version}
    if s.target is not None:
        d["sha256"] = s.target.sha256
    d.update(extra)
    return d


Result = tuple[UpdateState, Sequence[Action]]


def _start(s: UpdateState, version: int, target: Target, config: dict[str, Scalar]) -> Result:
    s = msgspec.structs.replace(
        s, phase="checking", director_version=version, target=target, bundle=None, previous=None,
        trial_attempts=0, retries=0, wait_reason=None, last_error=None, last_result=None,
        pending=None, pending_version=0, config=dict(config), pending_config={}, cancelling=False,
    )
    return s, [Emit("update.started", f"installing {target.path}", details=_details(s)), CheckConditions()]


def _end(s: UpdateState, result: Literal["committed", "rolled_back", "refused", "failed", "cancelled"],
         error: str | None, actions: list[Action]) -> Result:
    """Back to idle; a target that waited for the trial to end starts now."""
    done = msgspec.structs.replace(
        s, phase="idle", last_result=result, last_error=error, wait_reason=None, trial_attempts=0,
        retries=0, pending=None, pending_version=0, pending_config={}, cancelling=False,
    )
    if s.pending is not None:
        started, more = _start(done, s.pending_version, s.pending, s.pending_config)
        return msgspec.structs.replace(started, last_result=result, last_error=error), [*actions, *more]
    return done, actions


def _is_bundle(name: str | None, target: Target) -> bool:
    """Whether the unpacked bundle `name` (NAME-VERSION-SHA16, agent/update/store.py) is `target`."""
    return name is not None and name.endswith("-" + target.sha256[:16])


def _abandon_trial(s: UpdateState, e: Desired) -> Result:
    """Switching or on trial, a newer document wants something else: back to `previous`
    now, then the new target (when the rollback does not already restore it)."""
    new = e.target
    pending = None if new is None or _is_bundle(s.previous, new) else new
    why = (f"{_label(s.target)} is no longer desired" if new is None
           else f"{_label(s.target)} replaced by {new.path}")
    s2 = msgspec.structs.replace(
        s, phase="rolling_back", cancelling=True, last_error=f"cancelled during the {s.phase}: {why}",
        director_version=e.version, pending=pending, pending_version=e.version if pending else 0,
        pending_config=dict(e.config) if pending else {},
    )
    extra: dict[str, Scalar] = {"during": s.phase, "back_to": s.previous}
    if new is not None:
        extra["replaced_by"] = new.path
    return s2, [Emit("update.cancelled", why, "warning", _details(s, **extra)), Rollback()]


def _desired(s: UpdateState, e: Desired) -> Result:
    if e.version < s.director_version:
        return s, []  # trust already refuses older documents; never go back here either
    busy_with = s.target if s.phase != "idle" else None
    if busy_with is not None and e.target is not None and busy_with.sha256 == e.target.sha256:
        # The same target again (a re-signed document): carry on where we are.
        return msgspec.structs.replace(s, director_version=max(s.director_version, e.version),
                                       config=dict(e.config)), []
    if s.phase in ("switching", "trial") and s.previous is not None and not s.cancelling:
        return _abandon_trial(s, e)
    if e.target is None or (busy_with is None and e.target.sha256 == e.current_sha256):
        if s.phase in BEFORE_SWITCH:
            s2 = msgspec.structs.replace(s, director_version=e.version)
            return _end(s2, "cancelled", None, [
                Discard(s.bundle),
                Emit("update.cancelled", f"{_label(s.target)} is no longer desired", "warning", _details(s)),
            ])
        if s.phase in AFTER_SWITCH:
            return msgspec.structs.replace(s, pending=None, pending_version=0, pending_config={}), []
        return msgspec.structs.replace(s, director_version=e.version, config=dict(e.config)), []
    if s.phase in AFTER_SWITCH:
        if s.phase == "rolling_back" and _is_bundle(s.previous, e.target):
            # the rollback in progress restores it
            return msgspec.structs.replace(s, pending=None, pending_version=0, pending_config={}), []
        return msgspec.structs.replace(s, pending=e.target, pending_version=e.version,
                                       pending_config=dict(e.config)), []
    actions: list[Action] = []
    if s.phase in BEFORE_SWITCH:
        actions += [
            Discard(s.bundle),
            Emit("update.cancelled", f"{_label(s.target)} replaced by {e.target.path}", "warning",
                 _details(s, replaced_by=e.target.path)),
        ]
    s2, more = _start(s, e.version, e.target, e.config)
    return s2, [*actions, *more]


def _boot(s: UpdateState, policy: Policy) -> Result:
    p = s.phase
    if p == "idle":
        return s, []
    if p in ("checking", "waiting"):
        return s, [CheckConditions()]
    if p == "downloading":
        return s, [Download()]
    if p == "unpacking":
        return s, [Unpack()]
    if p == "switching":
        return s, [Switch()]
    if p == "trial":
        if s.trial_attempts >= policy.max_trial_attempts:
            reason = (f"the agent restarted {s.trial_attempts} times during the trial of "
                      f"{_label(s.target)}")
            s2 = msgspec.structs.replace(s, phase="rolling_back", last_error=reason)
            return s2, [Emit("update.health", reason, "error", _details(s, ok=False, check="restart-loop")),
                        Rollback()]
        return msgspec.structs.replace(s, trial_attempts=s.trial_attempts + 1), [RunHealthCheck()]
    if p == "committing":
        return s, [Commit()]
    return s, [Rollback()]  # rolling_back


def step(s: UpdateState, e: UpdateEvent, policy: Policy = Policy()) -> Result:
    """The whole table. Events that do not fit the phase are ignored (no actions)."""
    p = s.phase
    if isinstance(e, Desired):
        return _desired(s, e)
    if isinstance(e, Boot):
        return _boot(s, policy)
    if isinstance(e, Refused) and p in BEFORE_SWITCH:
        msg = f"{_label(s.target)} refused ({e.check}): {e.error}"
        return _end(s, "refused", msg, [
            Discard(s.bundle),
            Emit("update.refused", e.error, "error", _details(s, check=e.check)),
        ])
    if isinstance(e, Failed) and p in BEFORE_SWITCH:
        attempt = s.retries + 1
        if attempt > policy.max_retries:
            msg = f"{_label(s.target)} failed {attempt} times ({e.check}): {e.error}"
            return _end(s, "failed", msg, [
                Emit("update.failed", msg, "error", _details(s, check=e.check, attempt=attempt, final=True)),
            ])
        delay = backoff_s(policy, attempt, e.jitter)
        s2 = msgspec.structs.replace(s, retries=attempt, last_error=e.error)
        return s2, [
            Emit("update.failed", e.error, "warning",
                 _details(s, check=e.check, attempt=attempt, retry_in_s=round(delay, 2), final=False)),
            WaitFor(delay),
        ]
    if p in ("checking", "waiting"):
        if isinstance(e, Blocked):
            s2 = msgspec.structs.replace(s, phase="waiting", wait_reason=e.reason)
            emit: list[Action] = []
            # Said once per cause: the figures in a reason (free MiB, device time) change
            # between rechecks, the cause before its first colon does not.
            if (s.wait_reason or "").split(":")[0] != e.reason.split(":")[0]:
                extra: dict[str, Scalar] = {"why": e.reason}
                if e.check:
                    extra["check"] = e.check
                emit = [Emit("update.waiting", e.reason, details=_details(s, **extra))]
            return s2, [*emit, WaitFor(policy.recheck_s)]
        if isinstance(e, Clear):
            return msgspec.structs.replace(s, phase="downloading", wait_reason=None), [Download()]
        if isinstance(e, Recheck):
            return s, [CheckConditions()]
    if p == "downloading":
        if isinstance(e, Downloaded):
            return msgspec.structs.replace(s, phase="unpacking"), [Unpack()]
        if isinstance(e, Recheck):
            return msgspec.structs.replace(s, phase="checking"), [CheckConditions()]
    if p == "unpacking":
        if isinstance(e, Unpacked):
            s2 = msgspec.structs.replace(s, phase="switching", bundle=e.bundle, previous=e.previous)
            return s2, [Emit("update.verified", f"{_label(s.target)} verified and unpacked",
                             details=_details(s, bundle=e.bundle)), Switch()]
        if isinstance(e, AlreadyCurrent):
            return _end(s, "committed", None, [])
        if isinstance(e, Recheck):
            return msgspec.structs.replace(s, phase="checking"), [CheckConditions()]
    if p == "switching" and isinstance(e, Switched):
        s2 = msgspec.structs.replace(s, phase="trial", trial_attempts=1)
        return s2, [Emit("update.switched", f"current -> {s.bundle}",
                         details=_details(s, bundle=s.bundle, previous=s.previous)), RunHealthCheck()]
    if p == "trial":
        if isinstance(e, Recheck):
            # the check was interrupted by a document that changed nothing: run it again
            # (not a restart: the loop counter stays)
            return s, [RunHealthCheck()]
        if isinstance(e, HealthPassed):
            return msgspec.structs.replace(s, phase="committing"), [
                Emit("update.health", "health check passed", details=_details(s, ok=True, **e.details)),
                Commit(),
            ]
        if isinstance(e, HealthFailed):
            s2 = msgspec.structs.replace(s, phase="rolling_back", last_error=e.reason)
            return s2, [
                Emit("update.health", e.reason, "error", _details(s, ok=False, **e.details)),
                Rollback(),
            ]
    if p == "committing" and isinstance(e, Committed):
        return _end(s, "committed", None, [
            Emit("update.committed", f"{s.bundle} committed", details=_details(s, bundle=s.bundle)),
        ])
    if p == "rolling_back" and isinstance(e, RolledBack):
        reason = s.last_error or "health check failed"
        return _end(s, "cancelled" if s.cancelling else "rolled_back", reason, [
            Emit("update.rolled_back", reason, "error",
                 _details(s, reason=reason[:256], bundle=s.bundle, back_to=s.previous)),
        ])
    return s, []
