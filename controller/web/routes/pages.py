"""The dashboard: one HTML shell for every page (our JS picks the view from the path), our
static files, and plotly.js served from the installed `plotly` package (never copied here)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGES = ("/", "/devices/{device_id}", "/rollouts", "/rollouts/{rollout_id}", "/groups", "/groups/{group}")

router = APIRouter(include_in_schema=False)


@cache
def plotly_js() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def _shell() -> Response:
    return FileResponse(STATIC / "app.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


for _page in PAGES:
    router.add_api_route(_page, _shell, methods=["GET"], include_in_schema=False)


@router.get("/static/vendor/plotly.min.js")
def plotly_bundle() -> Response:
    path = plotly_js()
    if path is None:
        raise HTTPException(404, "plotly.js: the `plotly` package is not installed (fleetgen[controller])")
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})
