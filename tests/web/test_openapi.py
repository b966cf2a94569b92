"""Runs after the API modules (file order): every documented (operation, status) pair was
produced by some test, and every answer was checked against the document on the way."""

from __future__ import annotations

import sys

import pytest

from tests.web.client import EXERCISED, LAST_DOC, RAN, documented_operations

API_MODULES = ("tests.web.test_api", "tests.web.test_fleet_api")


def test_every_documented_answer_was_exercised() -> None:
    for name in API_MODULES:
        module = sys.modules.get(name)
        tests = {n for n in dir(module) if n.startswith("test_")} if module else {"?"}
        if not tests <= {t for m, t in RAN if m == name}:
            pytest.skip(f"{name} did not run whole in this session")
    missing = sorted(documented_operations(LAST_DOC) - EXERCISED)
    assert not missing, f"documented but never exercised: {missing}"
