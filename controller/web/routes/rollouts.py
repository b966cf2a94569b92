"""/api/v1/rollouts: start a staged rollout, watch it wave by wave, pause, resume, abort.

The leader's rollout service carries rollouts out; these routes record what the operator
asks through the same functions as `fleetgen rollout` (controller.services.rollouts.start_rollout,
the rollout repository's `request`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse

from agent.errors import UsageError
from controller.fleet.errors import FleetError
from controller.store.views import RolloutView
from controller.web.auth import require_read, require_write
from controller.web.routes import ctx, errors, invalid, not_found
from controller.web.schemas import RolloutIn, RolloutListOut, RolloutOut, RolloutSummaryOut

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])
RolloutId = Annotated[int, Path(ge=1, description="rollout id")]


def _get(request: Request, rollout_id: int) -> RolloutView:
    try:
        return ctx(request).store.repos.rollouts.get(rollout_id)
    except FleetError as e:
        raise not_found("rollout", str(rollout_id)) from e


@router.get("", response_model=RolloutListOut, dependencies=[Depends(require_read)],
            responses=errors(401, 503), summary="Every rollout, newest first")
def list_rollouts(request: Request) -> RolloutListOut:
    repo = ctx(request).store.repos.rollouts
    views = sorted((repo.get(v.id) for v in repo.list()), key=lambda v: v.id, reverse=True)
    return RolloutListOut(rollouts=[RolloutSummaryOut.of(v) for v in views])


@router.get("/{rollout_id}", response_model=RolloutOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="One rollout: its waves and each device's outcome")
def get_rollout(request: Request, rollout_id: RolloutId) -> RolloutOut:
    return RolloutOut.of(_get(request, rollout_id))


@router.post("", response_model=RolloutOut, status_code=201, responses=errors(400, 401, 404, 409, 413, 422, 503),
             summary="Start rolling a published bundle out to a group, as `fleetgen rollout start`")
def start(request: Request, body: RolloutIn, _token: Annotated[str, Depends(require_write)]) -> JSONResponse:
    from controller.fleet.rollout import RolloutPolicy, RolloutSpecError, parse_ratio, parse_waves
    from controller.services.rollouts import start_rollout

    context = ctx(request)
    if context.repo_dir is None:
        raise HTTPException(503, "rollouts need an image repository (serve --repo)")
    try:
        policy = RolloutPolicy(parse_waves(body.waves), parse_ratio(body.max_failures), body.wave_timeout_s)
    except RolloutSpecError as e:
        raise invalid("body", str(e).removeprefix("--").replace("max-failures", "max_failures")
                      .replace("wave-timeout", "wave_timeout_s")) from e
    try:
        context.store.repos.groups.get(body.group)
    except FleetError as e:
        raise not_found("group", body.group) from e
    try:
        view = start_rollout(context.store, context.repo_dir, body.bundle, body.group, policy, body.waves)
    except UsageError as e:
        raise HTTPException(409, str(e)) from e
    out = RolloutOut.of(view)
    return JSONResponse(out.model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/api/v1/rollouts/{view.id}"})


@router.post("/{rollout_id}/{action}", response_model=RolloutOut, responses=errors(401, 404, 409, 422, 503),
             summary="Pause, resume or abort a rollout, as `fleetgen rollout pause|resume|abort`")
def act(request: Request, rollout_id: RolloutId, action: Literal["pause", "resume", "abort"],
        _token: Annotated[str, Depends(require_write)]) -> RolloutOut:
    _get(request, rollout_id)
    try:
        return RolloutOut.of(ctx(request).store.repos.rollouts.request(rollout_id, action, ctx(request).clock()))
    except FleetError as e:
        raise HTTPException(409, str(e)) from e
