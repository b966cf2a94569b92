"""The resilience suite's plugin: two modes, one report.

- `make test` runs the short seeded subset: scenarios not marked `resilience`, at their
  short size (a few runs each).
- `make resilience` sets FLEETGEN_RESILIENCE=1: every scenario at full size, the ones
  marked `resilience` included, and FLEETGEN_RESILIENCE_REPORT=build/resilience.json.

A scenario takes the `scenario` fixture (a ScenarioResult to fill) and `size(short, full)`
for how many runs it does; the seed is FLEETGEN_RESILIENCE_SEED (14 by default), so a run
is repeatable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.resilience.report import ScenarioResult, table, write_json

FULL = os.environ.get("FLEETGEN_RESILIENCE") == "1"
SEED = int(os.environ.get("FLEETGEN_RESILIENCE_SEED", "14"))
_results: list[ScenarioResult] = []
_started = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    skip = pytest.mark.skip(reason="long resilience scenario: run by `make resilience`")
    for item in items:
        if item.get_closest_marker("resilience") is not None:
            item.add_marker(skip)


@pytest.fixture
def size() -> Callable[[int, int], int]:
    """size(short, full): the number for this mode."""
    return lambda short, full: full if FULL else short


@pytest.fixture
def seed() -> int:
    return SEED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and rep.failed):
        result = getattr(item, "_scenario", None)
        if result is not None:
            result.passed = rep.passed
    return rep


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[ScenarioResult]:
    name = request.node.name.removeprefix("test_")
    result = ScenarioResult(name=name, seed=SEED)
    request.node._scenario = result
    _results.append(result)
    yield result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _results:
        return
    if FULL or os.environ.get("FLEETGEN_RESILIENCE_REPORT"):
        terminalreporter.write_sep("=", "resilience report")
        terminalreporter.write_line(table(_results))
    target = os.environ.get("FLEETGEN_RESILIENCE_REPORT")
    if target:
        path = Path(target)
        write_json(_results, path, wall_s=time.monotonic() - _started, mode="full" if FULL else "short")
        terminalreporter.write_line(f"wrote {path}")
