"""The bundle store under a power cut: kill -9 at any instant of an install leaves
`current` on the old bundle or the new one, whole, and `recover()` clears the rest."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agent.manifest import load_manifest, verify_files
from agent.update.bundle import VerifiedBundle, build_bundle
from agent.update.store import BundleStore
from tests.trust.models import make_model_dir


def _install(store: BundleStore, path: Path, v: VerifiedBundle) -> None:
    with open(path, "rb", buffering=0) as f:
        store.install(f, origin=str(path), expected_length=v.length, expected_sha256=v.sha256, board=None)


def test_kill_9_at_any_point_of_an_install_leaves_old_or_new(tmp_path: Path) -> None:
    bundles = {}
    for version in ("1.0.0", "2.0.0"):
        out = tmp_path / f"tiny-{version}.fgb"
        bundles[version] = (out, build_bundle(make_model_dir(tmp_path / "m", version=version, size=4 << 20), out))
    store = BundleStore(tmp_path / "state")
    _install(store, *bundles["1.0.0"])

    def start_install() -> int:
        current = store.current()
        assert current is not None
        version = "2.0.0" if "tiny-1.0.0" in current.name else "1.0.0"
        pid = os.fork()
        if pid == 0:  # the device
            try:
                _install(store, *bundles[version])
            finally:
                os._exit(0)
        return pid

    start = time.monotonic()
    os.waitpid(start_install(), 0)
    took = time.monotonic() - start  # one whole install, as the child does it
    rng = random.Random(4)
    outcomes = set()

    def cut(wait: Callable[[Path], None]) -> None:
        old = store.current()
        assert old is not None
        pid = start_install()
        wait(old)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        store.recover()  # the next start
        current = store.current()
        assert current is not None and current.name.startswith(("tiny-1.0.0-", "tiny-2.0.0-"))
        verify_files(current, load_manifest(current))  # whole, not half-written
        outcomes.add("new" if current != old else "old")
        leftovers = [p.name for p in [*store.bundles.iterdir(), *store.root.iterdir()] if p.name.startswith(".")]
        assert not leftovers
        kept = {p.name for p in store.bundles.iterdir()}
        assert current.name in kept and len(kept) <= 2

    def after_the_flip(old: Path) -> None:
        deadline = time.monotonic() + 30
        while store.current() == old and time.monotonic() < deadline:
            time.sleep(0.0005)

    for _ in range(20):
        cut(lambda _old: time.sleep(rng.uniform(0, took * 1.3)))  # cut off at a random instant
    # Both sides of the flip, whatever the machine's load did to the random instants above:
    # at once (before it), and as soon as `current` has moved (after it, before the old
    # bundle is collected).
    cut(lambda _old: None)
    cut(after_the_flip)
    assert outcomes == {"old", "new"}


def test_recover_clears_what_a_crash_left_and_keeps_current_and_previous(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "state")
    for version in ("1.0.0", "2.0.0"):
        out = tmp_path / f"tiny-{version}.fgb"
        _install(store, out, build_bundle(make_model_dir(tmp_path / "m", version=version), out))
    current, previous = store.current(), store.root / os.readlink(store.previous_link)
    # Crashes at three instants: mid-unpack, after the rename into place, mid link flip.
    (store.bundles / ".incoming-abc").mkdir()
    (store.bundles / "tiny-3.0.0-0123456789abcdef").mkdir()
    os.symlink("bundles/tiny-3.0.0-0123456789abcdef", store.root / ".current.new999")
    store.recover()
    assert sorted(p.name for p in store.bundles.iterdir()) == sorted([current.name, previous.name])  # type: ignore[union-attr]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]
    assert store.current() == current
