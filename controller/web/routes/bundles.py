"""/api/v1/bundles: the bundles published in the image repository (its TUF targets)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from controller.web.auth import require_read
from controller.web.bundles import BundleView, published
from controller.web.routes import ctx, errors, not_found
from controller.web.schemas import BundleListOut, BundleOut

router = APIRouter(prefix="/api/v1/bundles", tags=["bundles"])


def _published(request: Request) -> list[BundleView]:
    from controller.tuf.repository import RepositoryError

    repo_dir = ctx(request).repo_dir
    if repo_dir is None:
        raise HTTPException(503, "no image repository on this controller (serve --repo DIR)")
    try:
        return published(repo_dir)
    except RepositoryError as e:
        raise HTTPException(503, f"repository: {e}") from e


def _out(b: BundleView) -> BundleOut:
    return BundleOut(path=b.path, name=b.name, version=b.version, length=b.length, sha256=b.sha256, boards=b.boards)


@router.get("", response_model=BundleListOut, dependencies=[Depends(require_read)],
            responses=errors(401, 503), summary="Published bundles")
def list_bundles(request: Request) -> BundleListOut:
    return BundleListOut(bundles=[_out(b) for b in _published(request)])


@router.get("/{path}", response_model=BundleOut, dependencies=[Depends(require_read)],
            responses=errors(401, 404, 422, 503), summary="One published bundle")
def get_bundle(request: Request, path: Annotated[str, Path(max_length=512)]) -> BundleOut:
    for b in _published(request):
        if b.path == path:
            return _out(b)
    raise not_found("bundle", path)
