"""Whatever bytes arrive, verification ends in a TrustError or a verified bundle: never
another exception, never a file outside the destination."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.trust.errors import TrustError
from agent.update.bundle import build_bundle, verify_bundle
from tests.trust.models import make_model_dir

_DIR = Path(tempfile.mkdtemp(prefix="fleetgen-fuzz-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)  # made at collection: gone with the run
_BUNDLE = _DIR / "tiny.fgb"
build_bundle(make_model_dir(_DIR, size=1500), _BUNDLE)
GOOD = _BUNDLE.read_bytes()


def _check(data: bytes, signed: bool) -> None:
    with tempfile.TemporaryDirectory(dir=_DIR) as d:
        dest = Path(d) / "out"
        dest.mkdir()
        with contextlib.suppress(TrustError):
            verify_bundle(
                io.BytesIO(data),
                dest=dest,
                expected_length=len(GOOD) if signed else None,
                expected_sha256=None,
            )
        for root, _dirs, files in os.walk(d):
            for f in files:
                assert Path(root, f).resolve().is_relative_to(dest.resolve())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8), st.booleans())
def test_mutated_bundles(mutations: list[tuple[int, int]], signed: bool) -> None:
    data = bytearray(GOOD)
    for pos, value in mutations:
        data[pos] = value
    _check(bytes(data), signed)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(GOOD)))
def test_truncated_bundles(cut: int) -> None:
    _check(GOOD[:cut], False)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _check(data, False)
