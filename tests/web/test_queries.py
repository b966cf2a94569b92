"""The web's query layer on SQLite and PostgreSQL: sorting on JSON fields, buckets, truncation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store import Store
from controller.web import queries
from controller.web.queries import DeviceFilter
from tests.controller.test_store import store as _store_fixture  # the sqlite/postgres fixture
from tests.web import fleet

NOW = 1_800_000_000.0


@pytest.fixture
def filled(store: Store) -> Iterator[Store]:
    fleet.fill(store, fleet.devices(8), NOW, history_s=3600, every_s=60)
    yield store


store = _store_fixture


def test_sort_on_json_fields_and_filters(filled: Store, tmp_path: Path) -> None:
    page = queries.list_devices(filled, DeviceFilter(), sort="budget_w", desc=True, limit=3)
    assert page.total == 8 and [d.budget_w for d in page.devices] == [12.5, 12.5, 10.0]
    temps = [d.temp_c for d in queries.list_devices(filled, DeviceFilter(), sort="temp_c").devices]
    assert temps == sorted(temps)  # type: ignore[type-var]
    online = queries.list_devices(filled, DeviceFilter(status="online", board="kria-kv260"))
    assert [d.id for d in online.devices] == ["sim-00001", "sim-00005"]


def test_buckets_and_truncation(filled: Store) -> None:
    hourly = queries.telemetry(filled, "sim-00002", NOW - 3600, NOW, 900, ["power_w"])
    assert hourly.t == [NOW - 3600 + 900 * i for i in range(4)] and not hourly.truncated
    assert all(v is not None for v in hourly.values["power_w"])
    raw = queries.telemetry(filled, "sim-00002", NOW - 3600, NOW, None, ["power_w"], max_points=50)
    assert len(raw.t) == 50 and raw.truncated and raw.t[0] == NOW - 3600
    assert not queries.telemetry(filled, "sim-00002", NOW - 3600, NOW, None, max_points=60).truncated
