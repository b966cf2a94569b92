"""The update table, exhaustively: every phase x every event, the happy path, failures,
refusals, cancellation, the loop counter, and a simulated crash at every journal step."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import pytest

from agent.trust.target import Target
from agent.update import machine as m

A = Target(path="a-1.fgb", length=100, sha256="a" * 64)
B = Target(path="b-2.fgb", length=200, sha256="b" * 64)
C = Target(path="c-3.fgb", length=300, sha256="c" * 64)
POLICY = m.Policy(max_retries=3, backoff_base_s=10, backoff_max_s=100, recheck_s=60, max_trial_attempts=3)

PHASES: tuple[m.Phase, ...] = ("idle", "checking", "waiting", "downloading", "unpacking", "switching", "trial",
                               "committing", "rolling_back")
EVENTS: tuple[m.UpdateEvent, ...] = (
    m.Boot(), m.Desired(5, B, None), m.Desired(5, None, None), m.Desired(5, A, A.sha256), m.Blocked("night"),
    m.Clear(), m.Recheck(), m.Downloaded(), m.Unpacked("b-2-bbbb", "a-1-aaaa"), m.AlreadyCurrent(), m.Switched(),
    m.HealthPassed({"perplexity": 40.0}), m.HealthFailed("self-test: no token", {}), m.Committed(), m.RolledBack(),
    m.Failed("timeout", "transport", 0.3), m.Refused("bad hash", "hash"),
)


def state(phase: m.Phase, **kw: object) -> m.UpdateState:
    base = m.UpdateState(phase=phase, director_version=4, target=None if phase == "idle" else A,
                         bundle="a-1-aaaa" if phase in m.AFTER_SWITCH else None, previous="z-0-zzzz")
    return msgspec.structs.replace(base, **kw)


def kinds(actions: Sequence[m.Action]) -> list[str]:
    return [a.kind if isinstance(a, m.Emit) else type(a).__name__ for a in actions]


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(PHASES, EVENTS)))
def test_every_phase_and_event_gives_a_valid_state(phase: m.Phase, event: m.UpdateEvent) -> None:
    before = state(phase, trial_attempts=1 if phase == "trial" else 0)
    after, actions = m.step(before, event, POLICY)
    # The result survives the journal's round trip, and the phase is one of the table's.
    assert msgspec.json.decode(msgspec.json.encode(after), type=m.UpdateState) == after
    assert after.phase in PHASES
    # After the switch nothing may refuse or discard: the trial always ends in commit or rollback.
    if phase in m.AFTER_SWITCH and isinstance(event, m.Desired | m.Refused | m.Failed):
        assert not [a for a in actions if isinstance(a, m.Discard)]
        wants_other = isinstance(event, m.Desired) and event.target != before.target
        if phase in ("switching", "trial") and wants_other:
            # A newer document abandons the trial: back to the previous bundle, at once.
            assert after.phase == "rolling_back" and after.cancelling, after
            assert kinds(actions) == ["update.cancelled", "Rollback"]
        else:
            assert after.phase == phase
    # An action that touches the store only comes from the phase that owns it.
    for a in actions:
        if isinstance(a, m.Switch):
            assert after.phase == "switching"
        if isinstance(a, m.Rollback):
            assert after.phase == "rolling_back"
        if isinstance(a, m.Commit):
            assert after.phase == "committing"


def run(s: m.UpdateState, *events: m.UpdateEvent) -> tuple[m.UpdateState, list[str]]:
    seen: list[str] = []
    for e in events:
        s, actions = m.step(s, e, POLICY)
        seen += kinds(actions)
    return s, seen


def test_happy_path_emits_each_step_and_commits() -> None:
    s, seen = run(m.UpdateState(), m.Desired(1, B, A.sha256), m.Clear(), m.Downloaded(),
                  m.Unpacked("b-2-bbbb", "a-1-aaaa"), m.Switched(), m.HealthPassed({"perplexity": 40.0}),
                  m.Committed())
    assert seen == ["update.started", "CheckConditions", "Download", "Unpack", "update.verified", "Switch",
                    "update.switched", "RunHealthCheck", "update.health", "Commit", "update.committed"]
    assert s.phase == "idle" and s.last_result == "committed" and s.last_error is None


def test_failed_health_rolls_back_naming_the_reason() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, A.sha256), m.Clear(), m.Downloaded(),
               m.Unpacked("b-2-bbbb", "a-1-aaaa"), m.Switched())
    s, actions = m.step(s, m.HealthFailed("perplexity: 90 vs 40", {"perplexity": 90.0}), POLICY)
    assert s.phase == "rolling_back" and kinds(actions) == ["update.health", "Rollback"]
    s, actions = m.step(s, m.RolledBack(), POLICY)
    [emit] = actions
    assert isinstance(emit, m.Emit) and emit.kind == "update.rolled_back"
    assert emit.details is not None and "perplexity: 90 vs 40" in str(emit.details["reason"])
    assert s.phase == "idle" and s.last_result == "rolled_back"


def test_the_loop_counter_rolls_back_after_repeated_restarts_in_trial() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, A.sha256), m.Clear(), m.Downloaded(),
               m.Unpacked("b-2-bbbb", "a-1-aaaa"), m.Switched())
    assert s.trial_attempts == 1
    s, actions = m.step(s, m.Boot(), POLICY)  # the agent died during the check
    assert s.trial_attempts == 2 and kinds(actions) == ["RunHealthCheck"]
    s, actions = m.step(s, m.Boot(), POLICY)
    assert s.trial_attempts == 3 and kinds(actions) == ["RunHealthCheck"]
    s, actions = m.step(s, m.Boot(), POLICY)
    assert s.phase == "rolling_back" and kinds(actions) == ["update.health", "Rollback"]
    assert "restarted 3 times" in (s.last_error or "")


def test_failures_retry_with_growing_jittered_backoff_then_give_up() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, None), m.Clear())
    delays = []
    for attempt in range(1, 4):
        s, actions = m.step(s, m.Failed("no answer", "transport", jitter=0.0), POLICY)
        [emit, wait] = actions
        assert isinstance(emit, m.Emit) and emit.kind == "update.failed" and isinstance(wait, m.WaitFor)
        delays.append(wait.seconds)
        assert s.retries == attempt
        s, actions = m.step(s, m.Recheck(), POLICY)
        assert kinds(actions) == ["CheckConditions"]
        s, _ = m.step(s, m.Clear(), POLICY)
    assert delays == [5.0, 10.0, 20.0]  # base 10 doubling, times 0.5 (jitter 0)
    s, actions = m.step(s, m.Failed("no answer", "transport"), POLICY)
    assert s.phase == "idle" and s.last_result == "failed" and kinds(actions) == ["update.failed"]


def test_jitter_spreads_a_fleet() -> None:
    low, high = m.backoff_s(POLICY, 2, 0.0), m.backoff_s(POLICY, 2, 0.99)
    assert low == 10.0 and 19.8 <= high < 20.0
    assert m.backoff_s(POLICY, 50, 0.5) <= POLICY.backoff_max_s


def test_a_refusal_is_final_and_discards() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, None), m.Clear())
    s, actions = m.step(s, m.Refused("sha256 mismatch", "hash"), POLICY)
    assert s.phase == "idle" and s.last_result == "refused" and kinds(actions) == ["Discard", "update.refused"]


def test_window_waits_once_then_rechecks_quietly() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, None))
    s, actions = m.step(s, m.Blocked("outside the maintenance window 02:00-04:00"), POLICY)
    assert s.phase == "waiting" and kinds(actions) == ["update.waiting", "WaitFor"]
    s, actions = m.step(s, m.Recheck(), POLICY)
    s, actions = m.step(s, m.Blocked("outside the maintenance window 02:00-04:00"), POLICY)
    assert kinds(actions) == ["WaitFor"]  # the same reason is not reported again
    s, actions = m.step(s, m.Recheck(), POLICY)
    s, actions = m.step(s, m.Clear(), POLICY)
    assert s.phase == "downloading" and kinds(actions) == ["Download"]


def test_a_download_that_filled_the_disk_waits_for_space_then_proceeds() -> None:
    """ENOSPC mid-download is a failure, not a refusal: after the backoff the conditions are
    checked again, the shortage is a wait (reason disk) rechecked every recheck_s, and the
    download resumes once space is back, without a new desired document."""
    s, _ = run(m.UpdateState(), m.Desired(1, B, None), m.Clear())
    s, actions = m.step(s, m.Failed("download: [Errno 28] No space left on device", "disk", 0.0), POLICY)
    assert kinds(actions) == ["update.failed", "WaitFor"] and s.phase == "downloading"
    s, actions = m.step(s, m.Recheck(), POLICY)
    assert s.phase == "checking" and kinds(actions) == ["CheckConditions"]
    s, actions = m.step(s, m.Blocked("not enough free disk: 0 MiB free, 1 MiB needed", "disk"), POLICY)
    assert s.phase == "waiting" and kinds(actions) == ["update.waiting", "WaitFor"]
    emit, wait = actions
    assert isinstance(emit, m.Emit) and emit.details is not None and emit.details["check"] == "disk"
    assert isinstance(wait, m.WaitFor) and wait.seconds == POLICY.recheck_s
    for free in (0, 1):  # still short (other figures): rechecked quietly, never given up
        s, actions = m.step(s, m.Recheck(), POLICY)
        assert kinds(actions) == ["CheckConditions"]
        s, actions = m.step(s, m.Blocked(f"not enough free disk: {free} MiB free, 2 MiB needed", "disk"), POLICY)
        assert kinds(actions) == ["WaitFor"] and s.phase == "waiting"
    s, _ = m.step(s, m.Recheck(), POLICY)
    s, actions = m.step(s, m.Clear(), POLICY)
    assert s.phase == "downloading" and kinds(actions) == ["Download"] and s.retries == 1


def test_a_newer_desired_cancels_before_the_switch_and_waits_after_it() -> None:
    s, _ = run(m.UpdateState(), m.Desired(1, B, None), m.Clear())
    s, actions = m.step(s, m.Desired(2, C, None), POLICY)
    assert kinds(actions) == ["Discard", "update.cancelled", "update.started", "CheckConditions"]
    assert s.target == C and s.phase == "checking" and s.director_version == 2
    s, _ = run(s, m.Clear(), m.Downloaded(), m.Unpacked("c-3-cccc", "a-1-aaaa"), m.Switched(),
               m.HealthPassed({}))
    # Committing is one rename: it finishes, then the newer target starts.
    s, actions = m.step(s, m.Desired(3, B, None), POLICY)
    assert actions == [] and s.phase == "committing" and s.pending == B
    s, actions = run(s, m.Committed())
    assert s.target == B and s.phase == "checking" and s.last_result == "committed"
    assert "update.committed" in actions and "update.started" in actions


def test_no_target_cancels_and_an_older_version_is_ignored() -> None:
    s, _ = run(m.UpdateState(), m.Desired(3, B, None), m.Clear())
    same, actions = m.step(s, m.Desired(2, C, None), POLICY)
    assert same == s and actions == []
    s, actions = m.step(s, m.Desired(4, None, None), POLICY)
    assert s.phase == "idle" and s.last_result == "cancelled" and "Discard" in kinds(actions)


def name(t: m.Target) -> str:
    """The bundle directory the store gives a target (NAME-VERSION-SHA16)."""
    return f"{t.path.removesuffix('.fgb')}-{t.sha256[:16]}"


def on_trial(target: m.Target = B, previous: str | None = "a-1-aaaa") -> m.UpdateState:
    s, _ = run(m.UpdateState(), m.Desired(1, target, None), m.Clear(), m.Downloaded(),
               m.Unpacked(name(target), previous), m.Switched())
    assert s.phase == "trial" and s.trial_attempts == 1
    return s


def test_a_newer_desired_during_the_trial_rolls_back_then_takes_the_new_target() -> None:
    s, actions = m.step(on_trial(), m.Desired(2, C, None, {"update.window": "02:00-04:00"}), POLICY)
    assert kinds(actions) == ["update.cancelled", "Rollback"]
    [emit, _] = actions
    assert isinstance(emit, m.Emit) and emit.details is not None
    assert emit.details["replaced_by"] == C.path and emit.details["during"] == "trial"
    assert s.phase == "rolling_back" and s.pending == C and s.director_version == 2
    # A health verdict that lands after the cancel changes nothing.
    assert m.step(s, m.HealthPassed({}), POLICY) == (s, [])
    s, seen = run(s, m.RolledBack())
    assert seen == ["update.rolled_back", "update.started", "CheckConditions"]
    assert s.phase == "checking" and s.target == C and s.config == {"update.window": "02:00-04:00"}
    assert s.last_result == "cancelled" and "cancelled during the trial" in (s.last_error or "")
    assert not s.cancelling and s.pending is None


def test_a_newer_desired_naming_the_previous_bundle_is_restored_by_the_rollback() -> None:
    s, actions = m.step(on_trial(B, previous=name(A)), m.Desired(2, A, None), POLICY)
    assert kinds(actions) == ["update.cancelled", "Rollback"] and s.pending is None
    s, seen = run(s, m.RolledBack())
    assert s.phase == "idle" and s.last_result == "cancelled" and seen == ["update.rolled_back"]


def test_no_target_during_the_trial_rolls_back_and_ends_cancelled() -> None:
    s, seen = run(on_trial(), m.Desired(2, None, None), m.RolledBack())
    assert seen == ["update.cancelled", "Rollback", "update.rolled_back"]
    assert s.phase == "idle" and s.last_result == "cancelled" and s.director_version == 2


def test_a_first_install_finishes_its_trial_before_the_newer_target() -> None:
    """With nothing to roll back to, abandoning the trial would leave no model."""
    s, actions = m.step(on_trial(previous=None), m.Desired(2, C, None), POLICY)
    assert actions == [] and s.phase == "trial" and s.pending == C
    s, seen = run(s, m.HealthPassed({}), m.Committed())
    assert s.target == C and s.phase == "checking" and "update.committed" in seen


def test_an_interrupted_check_resumes_without_counting_a_restart() -> None:
    s = on_trial()
    s2, actions = m.step(s, m.Recheck(), POLICY)
    assert s2 == s and kinds(actions) == ["RunHealthCheck"]


def test_a_newer_desired_while_rolling_back_waits_or_is_already_the_destination() -> None:
    s, _ = m.step(on_trial(B, previous=name(A)), m.HealthFailed("self-test", {}), POLICY)
    assert s.phase == "rolling_back"
    waiting, actions = m.step(s, m.Desired(2, C, None), POLICY)
    assert actions == [] and waiting.pending == C
    back, actions = m.step(waiting, m.Desired(3, A, None), POLICY)
    assert actions == [] and back.pending is None  # the rollback restores A
    s, _ = run(back, m.RolledBack())
    assert s.phase == "idle" and s.last_result == "rolled_back"


# -- a simulated crash at every journal step ------------------------------------------


@dataclass
class SimStore:
    """The store's links, as the worker's actions would move them."""

    current: str | None = "a-1-aaaa"
    previous: str | None = None
    bundles: set[str] = field(default_factory=lambda: {"a-1-aaaa"})
    interrupt_trial: bool = False


def perform(store: SimStore, s: m.UpdateState, a: m.Action, health_ok: bool) -> m.UpdateEvent | None:
    if isinstance(a, m.CheckConditions):
        return m.Clear()
    if isinstance(a, m.Download):
        return m.Downloaded()
    if isinstance(a, m.Unpack):
        assert s.target is not None
        bundle = "b-2-bbbb" if s.target == B else name(s.target)
        store.bundles.add(bundle)
        return m.Unpacked(bundle, store.current)
    if isinstance(a, m.Switch):
        if store.current != s.bundle:
            store.previous, store.current = store.current, s.bundle
        return m.Switched()
    if isinstance(a, m.RunHealthCheck):
        if store.interrupt_trial:  # the worker kills the check when a newer document is in
            store.interrupt_trial = False
            return None
        return m.HealthPassed({}) if health_ok else m.HealthFailed("self-test", {})
    if isinstance(a, m.Commit):
        store.bundles &= {store.current, store.previous} - {None}  # type: ignore[operator]
        return m.Committed()
    if isinstance(a, m.Rollback):
        store.current = s.previous
        store.bundles.discard(s.bundle or "")
        return m.RolledBack()
    return None


def drive(store: SimStore, journal: list[m.UpdateState], first: m.UpdateEvent, health_ok: bool,
          crash_at: int | None) -> None:
    """Like worker._drive: persist, then act. Stops ("kill -9") after journal write `crash_at`."""
    queue = [first]
    while queue:
        new, actions = m.step(journal[-1], queue.pop(0), POLICY)
        if new != journal[-1]:
            journal.append(new)
            if crash_at is not None and len(journal) - 1 == crash_at:
                return
        for a in actions:
            out = perform(store, journal[-1], a, health_ok)
            if out is not None:
                queue.append(out)


@pytest.mark.parametrize("health_ok", [True, False])
def test_a_crash_after_any_journal_write_ends_on_old_or_new(health_ok: bool) -> None:
    full: list[m.UpdateState] = [m.UpdateState()]
    drive(SimStore(), full, m.Desired(1, B, A.sha256), health_ok, None)
    steps = len(full) - 1
    assert steps >= 6
    for crash_at in range(1, steps + 1):
        store, journal = SimStore(), [m.UpdateState()]
        drive(store, journal, m.Desired(1, B, A.sha256), health_ok, crash_at)
        drive(store, journal, m.Boot(), health_ok, None)  # the restart
        end = journal[-1]
        assert end.phase == "idle", (crash_at, end)
        expected = "b-2-bbbb" if health_ok else "a-1-aaaa"
        assert store.current == expected, (crash_at, store)
        assert end.last_result == ("committed" if health_ok else "rolled_back")


def test_a_crash_at_any_journal_step_of_a_cancelled_trial_ends_on_the_newest_target() -> None:
    """B is on trial when a document naming C arrives (the check is killed); the agent is
    killed after each journal write of the cancel, the rollback and C's install."""

    def until_trial(store: SimStore, journal: list[m.UpdateState]) -> None:
        store.interrupt_trial = True
        drive(store, journal, m.Desired(1, B, A.sha256), True, None)
        assert journal[-1].phase == "trial" and store.current == "b-2-bbbb"

    full: list[m.UpdateState] = [m.UpdateState()]
    until_trial(SimStore(), full)
    start = len(full)
    drive(SimStore(), full, m.Desired(2, C, None), True, None)
    steps = len(full) - start
    assert steps >= 6
    for crash_at in range(start, start + steps):
        store, journal = SimStore(), [m.UpdateState()]
        until_trial(store, journal)
        drive(store, journal, m.Desired(2, C, None), True, crash_at)
        drive(store, journal, m.Boot(), True, None)  # the restart
        end = journal[-1]
        assert end.phase == "idle" and end.target == C and end.last_result == "committed", (crash_at, end)
        assert store.current == name(C) and "b-2-bbbb" not in store.bundles, (crash_at, store)
