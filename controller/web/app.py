"""The ASGI application: routers, error answers, /metrics, the dashboard."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from agent import __version__
from controller.web import metrics
from controller.web.auth import require_read
from controller.web.context import WebContext
from controller.web.limits import BodyLimit
from controller.web.routes import bundles, devices, errors, groups, pages, rollouts

log = logging.getLogger(__name__)


def _loc(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ())) or "request"


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail), "detail": None}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request", "type": ""}
    status = 400 if first["type"] == "json_invalid" else 422
    message = "body: not valid JSON" if status == 400 else f"{_loc(first)}: {first['msg']}"
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s: database error: %s", request.method, request.url.path, exc)
    return JSONResponse({"error": "database unavailable", "detail": None}, status_code=503)


def create_app(ctx: WebContext) -> ASGIApp:
    app = FastAPI(
        title="fleetgen controller",
        version=__version__,
        description="The fleet controller's REST API. Reads are open from the controller's own machine "
                    "(configurable) or need `Authorization: Bearer TOKEN`; writes always need a token "
                    "(`fleetgen token create NAME`).",
        openapi_url="/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN; /openapi.json is the document
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SQLAlchemyError, _store_error)
    app.include_router(devices.router)
    app.include_router(bundles.router)
    app.include_router(groups.router)
    app.include_router(rollouts.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    registry = metrics.registry(ctx.store, ctx.refused)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics (text exposition format)",
             response_class=Response, dependencies=[Depends(require_read)],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format 0.0.4"}, **errors(401, 503)})
    def get_metrics() -> Response:
        return Response(metrics.render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return metrics.RequestMetrics(BodyLimit(app, ctx.settings.max_body_bytes), registry)

