"""Who may call what: reads are open from the controller's own machine (configurable) or need
an API token; anything that changes state always needs one. `Authorization: Bearer TOKEN`."""

from __future__ import annotations

import ipaddress
import logging

from fastapi import HTTPException, Request

from controller.web.context import WebContext

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleetgen"'}


def _context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_name(request: Request) -> str | None:
    """The caller's token name; 401 when a token is given but wrong. None when none is given."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "authorization: expected 'Bearer TOKEN'", headers=_CHALLENGE)
    name = _context(request).tokens.check(token.strip())
    if name is None:
        raise HTTPException(401, "authorization: unknown or revoked token", headers=_CHALLENGE)
    return name


def require_read(request: Request) -> None:
    if _token_name(request) is not None:
        return
    ctx = _context(request)
    if ctx.settings.open_reads_on_localhost and _is_loopback(request.client.host if request.client else None):
        return
    raise HTTPException(401, "authorization: reads from other hosts need an API token", headers=_CHALLENGE)


def require_write(request: Request) -> str:
    name = _token_name(request)
    if name is None:
        raise HTTPException(401, "authorization: changing state needs an API token "
                                 "(fleetgen token create NAME)", headers=_CHALLENGE)
    log.info("api: %s %s by token %s", request.method, request.url.path, name)
    return name
