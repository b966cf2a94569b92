"""/api/v1/devices: the registry, one device's twin, its telemetry series and events."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from controller.web import queries
from controller.web.auth import require_read, require_write
from controller.web.queries import SERIES_FIELDS, DeviceFilter, SortKey
from controller.web.routes import DEVICE_ID, ctx, errors, invalid, not_found
from controller.web.schemas import (
    DesiredIn,
    DesiredSetOut,
    DeviceListOut,
    DeviceOut,
    DeviceSummaryOut,
    EventListOut,
    EventOut,
    SeriesOut,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID, description="device id")]
MAX_RANGE_S = 31 * 86400


@router.get("", response_model=DeviceListOut, dependencies=[Depends(require_read)],
            responses=errors(401, 422, 503), summary="List devices (filter, sort, page)")
def list_devices(
    request: Request,
    status: Annotated[Literal["online", "offline"] | None, Query()] = None,
    board: Annotated[str | None, Query(max_length=256)] = None,
    bundle: Annotated[str | None, Query(max_length=256, description="active bundle")] = None,
    health: Annotated[Literal["ok", "degraded", "failed", "unknown"] | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=63, description="substring of the device id")] = None,
    sort: Annotated[SortKey, Query()] = "id",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeviceListOut:
    f = DeviceFilter(status=status, board=board, bundle=bundle, health=health, q=q)
    page = queries.list_devices(ctx(request).store, f, sort=sort, desc=order == "desc", limit=limit, offset=offset)
    return DeviceListOut(total=page.total, limit=limit, offset=offset,
                         devices=[DeviceSummaryOut.of(d) for d in page.devices])


@router.get("/{device_id}", response_model=DeviceOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="One device: reported, desired, last sample")
def get_device(request: Request, device_id: DeviceIdPath) -> DeviceOut:
    store = ctx(request).store
    twin = queries.device(store, device_id)
    if twin is None:
        raise not_found("device", device_id)
    return DeviceOut.of(twin, store.repos.devices.detail(device_id))


@router.get("/{device_id}/telemetry", response_model=SeriesOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="Telemetry as time series over a range")
def get_telemetry(
    request: Request,
    device_id: DeviceIdPath,
    since: Annotated[float | None, Query(ge=0, description="Unix time; default: an hour before `until`")] = None,
    until: Annotated[float | None, Query(ge=0, description="Unix time; default: now")] = None,
    step: Annotated[float | None, Query(ge=1, le=86400, description="seconds per averaged point; "
                                         "omitted: raw samples (at most 10,000)")] = None,
    fields: Annotated[str | None, Query(max_length=256, description="comma-separated; default all: "
                                         + ", ".join(SERIES_FIELDS))] = None,
) -> SeriesOut:
    context = ctx(request)
    until = context.clock() if until is None else until
    since = until - 3600 if since is None else since
    if since >= until:
        raise invalid("query.since", f"must be before until ({since} >= {until})")
    if until - since > MAX_RANGE_S:
        raise invalid("query.since", f"range longer than {MAX_RANGE_S // 86400} days")
    names: tuple[str, ...] = SERIES_FIELDS
    if fields is not None:
        names = tuple(n.strip() for n in fields.split(",") if n.strip())
        unknown = [n for n in names if n not in SERIES_FIELDS]
        if unknown or not names:
            raise invalid("query.fields", f"unknown field {unknown[0]!r}" if unknown else "empty")
    if not queries.device_exists(context.store, device_id):
        raise not_found("device", device_id)
    series = queries.telemetry(context.store, device_id, since, until, step, names)
    return SeriesOut.of(device_id, series)


@router.get("/{device_id}/events", response_model=EventListOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="A device's events, newest first")
def get_events(
    request: Request,
    device_id: DeviceIdPath,
    since: Annotated[float | None, Query(ge=0)] = None,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_.-]{0,63}$",
                                      description="a kind, or a prefix ending before a dot (install)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventListOut:
    store = ctx(request).store
    if not queries.device_exists(store, device_id):
        raise not_found("device", device_id)
    found = queries.events(store, device_id, since=since, level=level, kind=kind, limit=limit)
    return EventListOut(events=[EventOut.of(e) for e in found])


@router.put("/{device_id}/desired", response_model=DesiredSetOut,
            responses=errors(400, 401, 404, 409, 413, 422, 503),
            summary="Sign and publish a device's desired state (what rollouts and power allocation use)")
def put_desired(request: Request, device_id: DeviceIdPath, body: DesiredIn,
                _token: Annotated[str, Depends(require_write)]) -> DesiredSetOut:
    from controller.store.desired import KEEP
    from controller.tuf.repository import RepositoryError

    context = ctx(request)
    if context.publisher is None:
        raise HTTPException(503, "desired state needs an image repository (serve --repo)")
    if not queries.device_exists(context.store, device_id):
        raise not_found("device", device_id)
    given = body.model_fields_set
    try:
        versions = context.publisher.direct(
            [device_id], target=body.target if "target" in given else KEEP,
            power_budget_w=body.power_budget_w if "power_budget_w" in given else KEEP)
    except RepositoryError as e:
        raise not_found("target", body.target or "") from e
    if device_id not in versions:  # the publisher skips revoked devices (ADR 0072)
        raise HTTPException(409, f"device {device_id} is revoked: enroll it again before directing it")
    version = versions[device_id]
    desired = context.store.repos.desired.get(device_id)
    assert desired is not None
    return DesiredSetOut(device_id=device_id, version=version, target=desired.target,
                         power_budget_w=desired.power_budget_w)
