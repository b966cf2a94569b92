"""One router per resource; each route checks input, calls one function, shapes the answer."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from controller.web.context import WebContext
from controller.web.schemas import ErrorOut

DEVICE_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"


def ctx(request: Request) -> WebContext:
    context: WebContext = request.app.state.ctx
    return context


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route gives (all carry ErrorOut)."""
    text = {400: "Malformed request", 401: "Missing or wrong API token", 404: "Unknown id",
            409: "Conflicts with the current state", 413: "Body too large",
            422: "A parameter or body field is invalid (named in `error`)",
            503: "Not available now: no image repository or broker on this controller, or the database "
                 "does not answer"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


def not_found(what: str, value: str) -> HTTPException:
    return HTTPException(404, f"{what}: no {value!r}")


def invalid(loc: str, message: str) -> HTTPException:
    return HTTPException(422, f"{loc}: {message}")
