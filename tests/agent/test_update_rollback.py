"""Trial and commit with real bundles of the shipped model: the five bad bundles of the
issue are rolled back with the failed check and its figures in the event; a good one is
committed; conditions and cancellation act on a real worker."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.manifest import load_manifest, verify_files
from agent.trust.fetch import Deadline, DownloadPolicy, LocalFetcher
from agent.update.conditions import UpdateConditions, parse_window
from agent.update.worker import Notice, UpdateWorker, WorkerPost, WorkerSettings
from tests.support.update_world import INT4, UpdateWorld, read_journal, variant, wait_until


class Device:
    def __init__(self, world: UpdateWorld, settings: WorkerSettings | None = None, **kw: object) -> None:
        self.notices: list[Notice] = []
        self.worker = UpdateWorker(world.state, world.fetcher, "dev-1", "generic", self._post,
                                   settings or WorkerSettings(), **kw)  # type: ignore[arg-type]
        self.worker.recover()
        self.worker.start()

    def _post(self, item: WorkerPost) -> None:
        if isinstance(item, Notice):
            self.notices.append(item)

    def kinds(self) -> list[str]:
        return [n.kind for n in self.notices]

    def one(self, kind: str) -> Notice:
        found = [n for n in self.notices if n.kind == kind]
        assert len(found) == 1, (kind, self.kinds())
        return found[0]

    def settle(self, timeout: float = 90) -> None:
        wait_until(self.worker.settled, timeout, "the update worker to settle")


@pytest.fixture
def world(tmp_path: Path) -> UpdateWorld:
    w = UpdateWorld(tmp_path)
    good = variant(tmp_path / "models", "austen", "1.0.0")
    dev = Device(w)
    try:
        dev.worker.submit(w.desired(w.publish(good)))
        dev.settle()
        assert dev.kinds()[-1] == "update.committed", dev.notices
    finally:
        dev.worker.stop()
    return w


def current_name(w: UpdateWorld) -> str:
    return (w.state / "current").resolve().name


BAD = {
    "self-test": ({"expect": "zzz never said"}, None, "self-test"),
    "hang": ({"time_limit_s": 4.0}, "selftest:hang:austen-2.0.0", "timeout"),
    "memory": ({"memory_limit_mb": 150}, None, "memory"),
    "crash": ({}, "load:crash:austen-2.0.0", "crash"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", [*BAD, "perplexity"])
def test_a_bad_bundle_is_rolled_back_with_the_reason(
    world: UpdateWorld, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = current_name(world)
    models = world.tmp / "models"
    if case == "perplexity":  # weights perturbed after the probe was recorded
        bad = variant(models, "austen", "2.0.0", perturb=0.5)
        expected = "perplexity"
    else:
        changes, fault, expected = BAD[case]
        if fault:
            monkeypatch.setenv("FLEETGEN_HEALTH_FAULT", fault)
        bad = variant(models, "austen", "2.0.0", **changes)
    dev = Device(world)
    try:
        dev.worker.submit(world.desired(world.publish(bad)))
        dev.settle()
    finally:
        dev.worker.stop()
    health = dev.one("update.health")
    assert health.level == "error" and health.details["check"] == expected, health
    rolled = dev.one("update.rolled_back")
    assert expected in str(rolled.details["reason"]), rolled
    assert "update.committed" not in dev.kinds()
    assert dev.kinds().index("update.switched") < dev.kinds().index("update.rolled_back")
    if case == "perplexity":
        # Both figures are in the event: what the device measured and what was recorded.
        assert health.details["perplexity"] > health.details["recorded_perplexity"] * 1.1  # type: ignore[operator]
        assert "recorded at build" in health.message
    if case == "hang":
        assert health.details["limit_s"] == 4.0
    if case == "memory":
        assert "150 MiB" in health.message
    if case == "crash":
        assert health.details["signal"] == "SIGKILL"
    assert current_name(world) == before
    verify_files(world.state / "current", load_manifest(world.state / "current"))
    assert sorted(p.name for p in (world.state / "bundles").iterdir()) == [before]
    journal = read_journal(world.state)
    assert journal["phase"] == "idle" and journal["last_result"] == "rolled_back"


@pytest.mark.timeout(300)
def test_a_good_bundle_on_another_engine_build_is_committed_and_gc_keeps_two(world: UpdateWorld) -> None:
    first = current_name(world)
    dev = Device(world)
    try:
        for version, source in (("2.0.0", INT4), ("3.0.0", INT4)):
            dev.worker.submit(world.desired(world.publish(variant(world.tmp / "models", "austen", version, source))))
            dev.settle()
    finally:
        dev.worker.stop()
    kinds = dev.kinds()
    steps = ["update.started", "update.downloading", "update.verified", "update.switched", "update.health",
             "update.committed"]
    seen = [k for k in kinds if k in steps]
    firsts = [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k]  # progress repeats
    assert firsts[: len(steps)] == steps
    health = next(n for n in dev.notices if n.kind == "update.health")
    assert health.details["ok"] is True and health.details["perplexity"] and health.details["tokens_per_s"]
    kept = sorted(p.name for p in (world.state / "bundles").iterdir())
    assert len(kept) == 2 and first not in kept and current_name(world).startswith("austen-3.0.0-")
    assert (world.state / "previous").resolve().name.startswith("austen-2.0.0-")


@pytest.mark.timeout(120)
def test_a_maintenance_window_makes_the_update_wait_until_it_opens(world: UpdateWorld) -> None:
    now = {"t": datetime.time(12, 0)}
    settings = WorkerSettings(conditions=UpdateConditions(window=parse_window("02:00-04:00")),
                              policy=__import__("agent.update.machine", fromlist=["Policy"]).Policy(recheck_s=0.05))
    before = current_name(world)
    dev = Device(world, settings, local_time=lambda: now["t"])
    try:
        dev.worker.submit(world.desired(world.publish(variant(world.tmp / "models", "austen", "2.0.0"))))
        # The event is stored before the state it leads to is journaled: wait for both.
        wait_until(lambda: "update.waiting" in dev.kinds() and read_journal(world.state)["phase"] == "waiting",
                   30, "update.waiting, journaled")
        waiting = dev.one("update.waiting")
        assert "02:00-04:00" in waiting.message and "12:00" in waiting.message
        assert current_name(world) == before
        assert not list((world.state / "downloads").glob("*.part"))  # no byte fetched while waiting
        now["t"] = datetime.time(2, 30)  # the window opens
        wait_until(lambda: "update.committed" in dev.kinds(), 60, "update.committed")
    finally:
        dev.worker.stop()
    assert dev.kinds().count("update.waiting") == 1
    assert current_name(world).startswith("austen-2.0.0-")


@pytest.mark.timeout(120)
def test_a_bundle_larger_than_the_free_disk_is_refused_before_download(world: UpdateWorld) -> None:
    settings = WorkerSettings(conditions=UpdateConditions(disk_reserve_mb=float(1 << 30)))  # a petabyte reserve
    dev = Device(world, settings)
    try:
        dev.worker.submit(world.desired(world.publish(variant(world.tmp / "models", "austen", "2.0.0"))))
        dev.settle()
    finally:
        dev.worker.stop()
    refused = dev.one("update.refused")
    assert refused.details["check"] == "disk" and "free disk" in refused.message
    assert "update.downloading" not in dev.kinds()


@pytest.mark.timeout(60)
def test_an_impossible_window_in_the_desired_document_is_refused(world: UpdateWorld) -> None:
    dev = Device(world)
    try:
        target = world.publish(variant(world.tmp / "models", "austen", "2.0.0"))
        dev.worker.submit(world.desired(target, config={"update.window": "25:00-26:00"}))
        dev.settle()
    finally:
        dev.worker.stop()
    refused = dev.one("update.refused")
    assert refused.details["check"] == "conditions" and "25:00-26:00" in refused.message
    assert "update.started" not in dev.kinds()


@pytest.mark.timeout(60)
def test_a_replayed_older_document_is_refused_naming_its_version(world: UpdateWorld) -> None:
    """A broker that lost the newer retained copy replays the older one after a restart: the
    refusal names the version it refused, so a rollout of the newer one does not count it."""
    from agent.trust.director import peek_desired

    older, newer = world.desired(None), world.desired(None)
    dev = Device(world)
    try:
        dev.worker.submit(newer)
        dev.settle()
        dev.worker.submit(older)
        dev.settle()
    finally:
        dev.worker.stop()
    refused = dev.one("update.refused")
    assert refused.details["director_version"] == peek_desired(older).version < peek_desired(newer).version
    assert "older" in refused.message or "replay" in refused.message


class StallingLink:
    """A fetcher factory serving 4 KiB chunks whose 2.0.0 target stalls after its first chunk
    (the first time) until `gate` is set; `opened` records each offset 2.0.0 was opened at."""

    def __init__(self, world: UpdateWorld) -> None:
        self.world = world
        self.gate, self.first_chunk = threading.Event(), threading.Event()
        self.opened: list[int] = []

    def fetcher(self) -> LocalFetcher:
        link = self

        class Slow(LocalFetcher):
            def _chunks(self, url: str, offset: int, deadline: Deadline, limit: int | None) -> Iterator[bytes]:
                if "austen-2.0.0" in url:
                    link.opened.append(offset)
                for i, chunk in enumerate(super()._chunks(url, offset, deadline, limit)):
                    if "austen-2.0.0" in url and i == 1 and not link.first_chunk.is_set():
                        link.first_chunk.set()
                        link.gate.wait(30)
                    yield chunk

        repo = self.world.repo
        return Slow(repo.metadata_dir, repo.targets_dir, DownloadPolicy(chunk_size=4096))


@pytest.mark.timeout(120)
def test_a_newer_desired_document_cancels_a_download_in_progress(world: UpdateWorld) -> None:
    link = StallingLink(world)
    two = world.publish(variant(world.tmp / "models", "austen", "2.0.0"))
    three = world.publish(variant(world.tmp / "models", "austen", "3.0.0", INT4))
    dev = Device(world)
    dev.worker._fetcher_factory = link.fetcher
    try:
        dev.worker.submit(world.desired(two))
        assert link.first_chunk.wait(30)
        dev.worker.submit(world.desired(three))  # while 2.0.0 is mid-download
        link.gate.set()
        dev.settle()
    finally:
        link.gate.set()
        dev.worker.stop()
    cancelled = dev.one("update.cancelled")
    assert cancelled.details["target"] == two and cancelled.details["replaced_by"] == three
    assert current_name(world).startswith("austen-3.0.0-")
    assert [n.details["target"] for n in dev.notices if n.kind == "update.committed"] == [three]
    assert not list((world.state / "downloads").glob("*.part"))


def test_the_same_document_again_does_not_restart_a_download(world: UpdateWorld) -> None:
    """The broker re-delivers the retained desired document on every reconnect: mid-download
    it is the same document, so the download goes on instead of starting over."""
    link = StallingLink(world)
    two = world.publish(variant(world.tmp / "models", "austen", "2.0.0"))
    dev = Device(world)
    dev.worker._fetcher_factory = link.fetcher
    document = world.desired(two)
    try:
        dev.worker.submit(document)
        assert link.first_chunk.wait(30)
        dev.worker.submit(document)  # the retained copy, after a reconnect
        link.gate.set()
        dev.settle()
    finally:
        link.gate.set()
        dev.worker.stop()
    assert not [n for n in dev.notices if n.kind == "update.cancelled"]
    assert link.opened == [0], link.opened  # one transfer, never re-opened
    assert [n.details["target"] for n in dev.notices if n.kind == "update.committed"] == [two]


@pytest.mark.timeout(180)
def test_a_newer_desired_document_cancels_the_trial_rolls_back_and_installs_the_newest(
    world: UpdateWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2.0.0's self-test hangs (its limit is 120 s); 3.0.0 arrives during the trial: the check
    is killed at once, `current` goes back to 1.0.0, then 3.0.0 installs and commits."""

    monkeypatch.setenv("FLEETGEN_HEALTH_FAULT", "selftest:hang:austen-2.0.0")
    before = current_name(world)
    two = world.publish(variant(world.tmp / "models", "austen", "2.0.0", time_limit_s=120.0))
    three = world.publish(variant(world.tmp / "models", "austen", "3.0.0", INT4))
    dev = Device(world)
    try:
        dev.worker.submit(world.desired(two))
        wait_until(lambda: "update.trial" in dev.kinds(), 90, "the trial of 2.0.0")
        assert current_name(world).startswith("austen-2.0.0-")
        dev.worker.submit(world.desired(three))
        # well before the hung check's 120 s limit (reaching it would say update.health timeout)
        wait_until(lambda: "update.rolled_back" in dev.kinds(), 90, "the cancelled trial to roll back")
        dev.settle()
    finally:
        dev.worker.stop()
    cancelled = dev.one("update.cancelled")
    assert cancelled.details["target"] == two and cancelled.details["replaced_by"] == three
    assert cancelled.details["during"] == "trial" and cancelled.details["back_to"] == before
    rolled = dev.one("update.rolled_back")
    assert "cancelled during the trial" in rolled.message and rolled.details["target"] == two
    assert "update.health" not in dev.kinds()[: dev.kinds().index("update.rolled_back")]  # never judged
    assert [n.details["target"] for n in dev.notices if n.kind == "update.committed"] == [three]
    assert current_name(world).startswith("austen-3.0.0-")
    assert not [p for p in (world.state / "bundles").iterdir() if p.name.startswith("austen-2.0.0-")]
    journal = read_journal(world.state)
    assert journal["phase"] == "idle" and journal["last_result"] == "committed" and not journal["cancelling"]


@pytest.mark.timeout(120)
def test_a_transport_failure_is_retried_with_backoff_not_refused(world: UpdateWorld) -> None:

    from agent.trust.errors import TransportError
    from agent.trust.fetch import LocalFetcher
    from agent.update.machine import Policy

    link = {"down": True, "failures": 0}

    class Flaky(LocalFetcher):
        """The controller is unreachable until the test says otherwise."""

        def _chunks(self, url: str, offset: int, deadline: Deadline, limit: int | None) -> Iterator[bytes]:
            if link["down"] and "/targets/" in url:
                link["failures"] += 1
                if link["failures"] >= 2:
                    link["down"] = False  # back after the second try
                raise TransportError(f"{url}: no answer for offset {offset} after 6 requests")
            yield from super()._chunks(url, offset, deadline, limit)

    settings = WorkerSettings(policy=Policy(backoff_base_s=0.05, backoff_max_s=0.2))
    dev = Device(world, settings)
    dev.worker._fetcher_factory = lambda: Flaky(world.repo.metadata_dir, world.repo.targets_dir)
    try:
        dev.worker.submit(world.desired(world.publish(variant(world.tmp / "models", "austen", "2.0.0"))))
        wait_until(lambda: "update.committed" in dev.kinds(), 60, "update.committed after the retries")
    finally:
        dev.worker.stop()
    failed = [n for n in dev.notices if n.kind == "update.failed"]
    assert [n.details["attempt"] for n in failed] == [1, 2]
    assert all(n.details["check"] == "transport" and n.details["final"] is False for n in failed)
    assert all(0.025 <= float(n.details["retry_in_s"]) <= 0.2 for n in failed)  # type: ignore[arg-type]
    assert "update.refused" not in dev.kinds()
    assert current_name(world).startswith("austen-2.0.0-")
