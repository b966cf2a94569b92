"""/api/v1/groups: groups of devices, their power budget and its allocation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from controller.fleet.errors import FleetError
from controller.store.views import GroupView
from controller.web.auth import require_read, require_write
from controller.web.routes import ctx, errors, not_found
from controller.web.schemas import BudgetIn, GroupListOut, GroupOut, GroupPowerOut, MemberPowerOut

router = APIRouter(prefix="/api/v1/groups", tags=["groups"])
GroupName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="group name")]


def _out(g: GroupView) -> GroupOut:
    return GroupOut(name=g.name, rules=[str(r) for r in g.rules], members=list(g.members), budget_w=g.budget_w)


def _group(request: Request, name: str) -> GroupView:
    try:
        return ctx(request).store.repos.groups.get(name)
    except FleetError as e:
        raise not_found("group", name) from e


@router.get("", response_model=GroupListOut, dependencies=[Depends(require_read)],
            responses=errors(401, 503), summary="Groups with their rules, members and budget")
def list_groups(request: Request) -> GroupListOut:
    return GroupListOut(groups=[_out(g) for g in ctx(request).store.repos.groups.list()])


@router.get("/{name}", response_model=GroupOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="One group")
def get_group(request: Request, name: GroupName) -> GroupOut:
    return _out(_group(request, name))


@router.get("/{name}/power", response_model=GroupPowerOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="A group's budget, each device's allocation and draw")
def get_power(request: Request, name: GroupName) -> GroupPowerOut:
    group = _group(request, name)
    store = ctx(request).store
    members = store.repos.power.members(name, online_only=False)
    online = {d.id for d in store.devices() if d.online}
    devices = [MemberPowerOut(device_id=m.device_id, board=m.board, online=m.device_id in online,
                              allocated_w=m.allocated_w, draw_w=m.demand_w, priority=m.settings.priority,
                              floor_w=m.settings.floor_w, cap_w=m.settings.cap_w) for m in members]
    return GroupPowerOut(name=group.name, budget_w=group.budget_w,
                         allocated_w=sum(d.allocated_w or 0 for d in devices),
                         draw_w=sum(d.draw_w or 0 for d in devices), devices=devices)


@router.put("/{name}/budget", response_model=GroupOut, responses=errors(400, 401, 404, 413, 422, 503),
            summary="Set (or clear, with null) a group's power budget, as `fleetgen budget set`")
def put_budget(request: Request, name: GroupName, body: BudgetIn,
               _token: Annotated[str, Depends(require_write)]) -> GroupOut:
    _group(request, name)
    ctx(request).store.repos.groups.set_budget(name, body.budget_w)
    return _out(_group(request, name))
