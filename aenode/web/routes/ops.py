"""Operations: ``/healthz`` (anyone, cheap, read-only, cached), ``/metrics`` (any role) and
the static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aenode.web.context import ViewerApi, WebDep

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}


@router.get("/healthz")
def healthz(web: WebDep) -> JSONResponse:
    ok, body = web.health.check()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(web: WebDep, p: ViewerApi) -> Response:
    return Response(generate_latest(web.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/static/{name}")
def static(name: str) -> Response:
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise HTTPException(404, "not found")
    try:
        data = (STATIC_DIR / name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPException(404, "not found") from None
    return Response(data, media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "max-age=300"})
