"""The update lifecycle's adapter: runs the machine's actions off the daemon loop.

The daemon hands each `desired` envelope to `UpdateWorker.submit`; one worker thread
verifies it (agent.trust), feeds the machine (agent/update/machine.py), writes each new
state to the journal *before* acting on it, performs the actions (conditions, download,
unpack, switch, health check in a child, commit, roll back) and posts what the daemon
publishes: `Notice` (an event for `dev/{id}/events`), `Snapshot` (fields of `reported`)
and `DesiredApplied` (the verified document: power budget, config). Only the newest
pending document matters; its arrival stops the step in progress (a download, a health
check) so that the machine can cancel it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import queue
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from agent.errors import FleetgenError
from agent.manifest import load_manifest
from agent.protocol.messages import DesiredState, Scalar, SignedEnvelope
from agent.trust.director import claimed_version
from agent.trust.errors import SlowRetrievalError, TransportError, TrustError
from agent.update import machine as m
from agent.update.conditions import (
    ConditionsError,
    Readings,
    UpdateConditions,
    battery_percent,
    evaluate,
    free_bytes,
    total_bytes,
)
from agent.update.health import run_health_check
from agent.update.journal import Journal
from agent.update.store import BundleStore

if TYPE_CHECKING:
    from agent.trust.fetch import BoundedFetcher
    from agent.update.install import Installer

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class ActiveBundle:
    name: str
    version: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def bundle_label(path: Path | None) -> ActiveBundle | None:
    if path is None:
        return None
    try:
        manifest = load_manifest(path)
    except FleetgenError as e:
        log.error("bundle at %s is unreadable: %s", path, e)
        return None
    return ActiveBundle(manifest.name, manifest.version, path)


def active_bundle(state_dir: Path) -> ActiveBundle | None:
    """The bundle `current` points at, if any (the store flips it atomically)."""
    return bundle_label(BundleStore(state_dir).current())


@dataclass(frozen=True)
class Notice:
    kind: str
    message: str = ""
    level: Literal["info", "warning", "error"] = "info"
    details: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """What `reported` says about updates."""

    phase: str
    active: ActiveBundle | None
    previous: ActiveBundle | None
    director_version: int
    last_error: str | None
    last_result: str | None
    health: Literal["ok", "degraded", "failed", "unknown"]


@dataclass(frozen=True)
class DesiredApplied:
    desired: DesiredState


WorkerPost = Notice | Snapshot | DesiredApplied


@dataclass(frozen=True)
class WorkerSettings:
    policy: m.Policy = field(default_factory=m.Policy)
    conditions: UpdateConditions = field(default_factory=UpdateConditions)
    providers: tuple[str, ...] = ()
    board_root: Path = Path("/")


class UpdateWorker:
    def __init__(
        self,
        state_dir: Path,
        fetcher_factory: Callable[[], BoundedFetcher],
        device_id: str,
        board: str | None,
        post: Callable[[WorkerPost], None],
        settings: WorkerSettings = WorkerSettings(),
        *,
        in_flight: Callable[[], int] = lambda: 0,
        local_time: Callable[[], datetime.time] = lambda: datetime.datetime.now().time(),
        rng: random.Random | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.device_id = device_id
        self.board = board
        self.post = post
        self.settings = settings
        self.in_flight = in_flight
        self.local_time = local_time
        self.rng = rng or random.Random()
        self._fetcher_factory = fetcher_factory
        self.journal = Journal(self.state_dir)
        self.store = BundleStore(self.state_dir)
        self.state = self.journal.load()
        self._pending: queue.Queue[SignedEnvelope | None] = queue.Queue(maxsize=1)
        self._wake_at: float | None = None
        self._drain_started: float | None = None
        self._interrupted = False
        self._verify_retries = 0
        self._retry_envelope: SignedEnvelope | None = None
        self._acting_on: SignedEnvelope | None = None  # the document the steps now follow
        self._installer: Installer | None = None
        self._busy = threading.Event()  # set while an envelope or a wake-up is handled
        self._busy.set()  # until Boot has been handled
        self._submitted = 0
        self._handled = 0  # documents handled or superseded before they were
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="updates", daemon=True)

    # -- daemon side ----------------------------------------------------------------

    def recover(self) -> None:
        """Before anything reports what runs: undo what the journal does not name."""
        self.store.recover(keep=[self.state.bundle] if self.state.bundle else [])

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._replace(None)
        self._thread.join(timeout)

    def submit(self, envelope: SignedEnvelope) -> None:
        with self._count_lock:
            self._submitted += 1
        self._replace(envelope)

    def _replace(self, item: SignedEnvelope | None) -> None:
        # Newest wins: drop a pending, not yet started document.
        with contextlib.suppress(queue.Empty):
            dropped = self._pending.get_nowait()
            if dropped is not None:
                with self._count_lock:
                    self._handled += 1
        self._pending.put_nowait(item)

    def snapshot(self) -> Snapshot:
        s = self.state
        health: Literal["ok", "degraded", "failed", "unknown"] = "unknown"
        if s.phase == "trial":
            health = "unknown"
        elif s.last_result in ("rolled_back", "failed") or s.phase == "rolling_back":
            health = "degraded"
        elif self.store.current() is not None:
            health = "ok"
        return Snapshot(s.phase, bundle_label(self.store.current()), bundle_label(self.store.previous()),
                        s.director_version, s.last_error, s.last_result, health)

    # -- the thread -----------------------------------------------------------------

    @property
    def installer(self) -> Installer:
        if self._installer is None:
            from agent.update.install import Installer  # python-tuf: only once needed

            self._installer = Installer(self.state_dir, self._fetcher_factory(), board=self.board,
                                        device_id=self.device_id)
        return self._installer

    def settled(self) -> bool:
        """Nothing to do until the next document: idle, nothing pending or scheduled."""
        with self._count_lock:
            done = self._handled == self._submitted
        return done and not self._busy.is_set() and self._wake_at is None and self.state.phase == "idle"

    def _run(self) -> None:
        try:
            self._drive(m.Boot())
        except Exception:
            log.exception("update journal could not be resumed")
        while True:
            timeout = None if self._wake_at is None else max(0.0, self._wake_at - time.monotonic())
            self._busy.clear()
            try:
                envelope = self._pending.get(timeout=timeout)
            except queue.Empty:
                self._busy.set()
                self._wake_at = None
                if self._retry_envelope is not None:
                    envelope, self._retry_envelope = self._retry_envelope, None
                else:
                    self._guarded(m.Recheck())
                    continue
            self._busy.set()
            if envelope is None:
                return
            try:
                self._on_envelope(envelope)
            finally:
                with self._count_lock:
                    self._handled += 1

    def _guarded(self, event: m.UpdateEvent) -> None:
        try:
            self._drive(event)
        except Exception as e:
            # A bug in one step must not stop later updates; the journal still says where we are.
            log.exception("update step failed unexpectedly")
            self.post(Notice("update.failed", f"internal error: {type(e).__name__}: {e}", "error"))

    def _on_envelope(self, envelope: SignedEnvelope) -> None:
        self._acting_on = envelope
        try:
            verified = self.installer.verifier.verify_desired(envelope)
            config = dict(verified.desired.config)
            self.settings.conditions.with_overrides(config)  # refuse impossible conditions now
        except TransportError as e:
            self._verify_retries += 1
            if self._verify_retries <= self.settings.policy.max_retries:
                delay = m.backoff_s(self.settings.policy, self._verify_retries, self.rng.random())
                self._retry_envelope = envelope
                with self._count_lock:
                    self._submitted += 1  # it comes back as if submitted again
                self._wake_at = time.monotonic() + delay
                self.post(Notice("update.failed", str(e), "warning",
                                 {"check": e.check, "attempt": self._verify_retries,
                                  "retry_in_s": round(delay, 1), "final": False}))
            else:
                self.post(Notice("update.failed", str(e), "error", {"check": e.check, "final": True}))
            self._resume_if_interrupted()
            return
        except (TrustError, ConditionsError) as e:
            check = getattr(e, "check", "trust")
            details: dict[str, Scalar] = {"check": check, "error": type(e).__name__}
            claimed = claimed_version(envelope)
            if claimed is not None:
                details["director_version"] = claimed
            self.post(Notice("update.refused", str(e), "error", details))
            self._resume_if_interrupted()
            return
        except FleetgenError as e:
            self.post(Notice("update.failed", str(e), "error", {"final": True}))
            self._resume_if_interrupted()
            return
        self._verify_retries = 0
        self.post(DesiredApplied(verified.desired))
        current = self.store.current()
        current_sha = None
        if current is not None and verified.target is not None and self.store.is_current(verified.target.sha256):
            current_sha = verified.target.sha256
        self._guarded(m.Desired(verified.desired.version, verified.target, current_sha, config))
        self._resume_if_interrupted()

    def _resume_if_interrupted(self) -> None:
        # (an interrupted trial that the newer document did not abandon: its check runs again)
        if self._interrupted and self.state.phase in (*m.BEFORE_SWITCH, "trial"):
            self._interrupted = False
            self._guarded(m.Recheck())

    def _drive(self, first: m.UpdateEvent) -> None:
        events: deque[m.UpdateEvent] = deque([first])
        while events:
            new, actions = m.step(self.state, events.popleft(), self.settings.policy)
            # A step's events are stored (post is durable for notices) before its state is
            # journaled: a crash in between repeats the event on resume, never loses it.
            for action in actions:
                if isinstance(action, m.Emit):
                    self._perform(action)
            if new != self.state:
                self.journal.save(new)  # write-ahead: the journal knows before we act
                self.state = new
                self.post(self.snapshot())
            for action in actions:
                if isinstance(action, m.Emit):
                    continue
                outcome = self._perform(action)
                if outcome is not None:
                    events.append(outcome)

    def _has_newer(self) -> bool:
        """A document waits that differs from the one being acted on. The retained document
        the broker re-delivers on every reconnect is the same one: it must not cancel (and
        restart) a download in progress, which cost ~15 s per cut on a slow link."""
        with self._pending.mutex:
            items = list(self._pending.queue)
        return any(item is None or item != self._acting_on for item in items)

    def _abandons_trial(self) -> bool:
        """Whether the pending document would end the trial in progress: a stop, or a newer
        version naming another target while there is a bundle to go back to. It is read, not
        yet verified: a hint for killing the health check early (verification still decides,
        and a refused document resumes the check), so that the retained document that every
        restart receives again, or garbage, does not restart the check."""
        with self._pending.mutex:
            items = list(self._pending.queue)
        if not items:
            return False
        if items[0] is None:
            return True
        s = self.state
        if s.previous is None:
            return False  # a first install finishes its trial (machine.py)
        try:
            desired = msgspec.json.decode(items[0].payload, type=DesiredState)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if desired.version <= s.director_version:
            return False
        if desired.target is None:
            return True
        return s.target is None or desired.target.hashes.get("sha256") != s.target.sha256

    # -- actions --------------------------------------------------------------------

    def _perform(self, a: m.Action) -> m.UpdateEvent | None:
        if isinstance(a, m.Emit):
            self.post(Notice(a.kind, a.message, a.level, dict(a.details or {})))
            return None
        if isinstance(a, m.WaitFor):
            self._wake_at = time.monotonic() + a.seconds
            return None
        if isinstance(a, m.Discard):
            self._discard(a.bundle)
            return None
        if self._has_newer() and isinstance(a, m.CheckConditions | m.Download | m.Unpack):
            self._interrupted = True  # a newer document decides what comes next
            return None
        if isinstance(a, m.CheckConditions):
            return self._check_conditions()
        if isinstance(a, m.Download):
            return self._download()
        if isinstance(a, m.Unpack):
            return self._unpack()
        if isinstance(a, m.Switch):
            assert self.state.bundle is not None
            self.store.switch(self.state.bundle)
            return m.Switched()
        if isinstance(a, m.RunHealthCheck):
            return self._health()
        if isinstance(a, m.Commit):
            self.store.commit()
            return m.Committed()
        if isinstance(a, m.Rollback):
            self.store.rollback(self.state.bundle, self.state.previous)
            return m.RolledBack()
        raise AssertionError(f"unknown action {a!r}")

    def _discard(self, bundle: str | None) -> None:
        self.installer.discard_downloads()
        keep = {p.name for p in (self.store.current(), self.store.previous()) if p}
        if bundle is not None and bundle not in keep:
            shutil.rmtree(self.store.bundles / bundle, ignore_errors=True)

    def _check_conditions(self) -> m.UpdateEvent:
        target = self.state.target
        assert target is not None
        try:
            conditions = self.settings.conditions.with_overrides(self.state.config)
        except ConditionsError as e:
            return m.Refused(str(e), e.check)
        part = self.installer.part_file(target)
        have = part.stat().st_size if part.exists() else 0
        need = (target.length - have) + target.length  # the rest of the download + the unpacked copy
        in_flight = self.in_flight()
        now = time.monotonic()
        if in_flight and self._drain_started is None:
            self._drain_started = now
        if not in_flight:
            self._drain_started = None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        readings = Readings(self.local_time(), battery_percent(self.settings.board_root),
                            free_bytes(self.state_dir), in_flight, self._drain_started, now,
                            total_bytes(self.state_dir))
        verdict = evaluate(conditions, readings, need)
        if verdict is None:
            return m.Clear()
        if verdict.refuse:
            return m.Refused(verdict.reason, "disk")
        return m.Blocked(verdict.reason, verdict.check)

    def _download(self) -> m.UpdateEvent | None:
        target = self.state.target
        assert target is not None
        inst = self.installer
        url = inst.verifier.url_for(target.path, target.sha256)
        last = [0.0, 0, time.monotonic()]  # time of the last notice, bytes then, start

        def progress(have: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or have == total:
                rate = (have - int(last[1])) / max(now - last[0], 1e-6) if last[0] else 0.0
                last[0], last[1] = now, have
                self.post(Notice("update.downloading", f"{have}/{total} bytes",
                                 details={"bytes": have, "total": total, "rate_bps": round(rate)}))

        from agent.trust.updater import tuf_errors
        from agent.update.install import Cancelled

        try:
            with tuf_errors():
                inst.download(target, url, progress=progress, cancelled=self._has_newer)
        except Cancelled:
            self._interrupted = True
            return None
        except (TransportError, SlowRetrievalError) as e:
            return m.Failed(str(e), e.check, self.rng.random())
        except TrustError as e:
            return m.Refused(str(e), e.check)
        except OSError as e:
            return m.Failed(f"download: {e}", "disk", self.rng.random())
        return m.Downloaded()

    def _unpack(self) -> m.UpdateEvent | None:
        target = self.state.target
        assert target is not None
        inst = self.installer
        if not inst.part_file(target).exists():
            # The download went before the journal learnt of the unpacked bundle (a crash):
            # fetch again (recover() removed the unnamed bundle).
            return m.Recheck()
        previous = self.store.current()
        try:
            installed = inst.unpack(target)
        except TrustError as e:
            return m.Refused(str(e), e.check)
        except OSError as e:
            return m.Failed(f"unpack: {e}", "disk", self.rng.random())
        if not installed.changed:
            return m.AlreadyCurrent()
        return m.Unpacked(installed.path.name, previous.name if previous is not None else None)

    def _health(self) -> m.UpdateEvent | None:
        assert self.state.bundle is not None
        if self._abandons_trial():
            self._interrupted = True  # the newer document decides first
            return None
        self.post(Notice("update.trial", f"health check of {self.state.bundle} (attempt "
                         f"{self.state.trial_attempts})", details={"attempt": self.state.trial_attempts}))
        report = run_health_check(self.store.bundles / self.state.bundle, self.settings.providers,
                                  cancelled=self._abandons_trial)
        if report.check == "cancelled":
            with self._pending.mutex:
                stopping = bool(self._pending.queue) and self._pending.queue[0] is None
            why = "the agent is stopping" if stopping else "a newer desired document arrived"
            log.info("health check of %s stopped: %s", self.state.bundle, why)
            self._interrupted = True
            return None
        details: dict[str, Scalar] = {"check": report.check, **report.details}
        if report.ok:
            return m.HealthPassed(details)
        return m.HealthFailed(f"{report.check}: {report.reason}", details)
