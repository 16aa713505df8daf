"""Images: a result's secondary capture as PNG (any role; never cached by the browser)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from aenode.web.context import ViewerPage, WebDep
from aenode.web.services import check_uid

router = APIRouter()


@router.get("/studies/{uid}/sc.png")
def sc_png(uid: str, web: WebDep, p: ViewerPage, model: str = Query(..., max_length=64),
           revision: int = Query(..., ge=1)) -> Response:
    png = web.data.sc_png(check_uid(uid), model, revision)
    if png is None:
        raise HTTPException(404, "no secondary capture for this result")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
