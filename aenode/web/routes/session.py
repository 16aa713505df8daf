"""Signing in and out: ``GET/POST /login`` (anyone; login CSRF cookie, throttled, bounded
password work) and ``POST /logout`` (ends the server-side session)."""

from __future__ import annotations

import math
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from aenode.logs import get_logger
from aenode.web.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from aenode.web.context import ViewerPage, WebApp, WebDep, require_form_csrf

log = get_logger("aenode.web")

router = APIRouter()


def safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/alerts"
    return value


def _login_page(web: WebApp, request: Request, next_: str | None, error: str | None,
                status: int = 200) -> HTMLResponse:
    token = web.auth.new_login_csrf()
    resp = web.render("login.html", request, None, status=status, next=safe_next(next_), login_csrf=token,
                      error=error, default_admin=str(web.auth.generated_admin_file or ""))
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=web.auth.secure_cookies(request.url.scheme), path="/login")
    return resp


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, web: WebDep, next: str | None = None, error: str | None = None) -> HTMLResponse:
    return _login_page(web, request, next, error)


@router.post("/login")
def login(request: Request, web: WebDep, username: str = Form(""), password: str = Form(""),
          csrf_token: str = Form(""), next: str = Form("/alerts")) -> Response:
    if not web.auth.check_login_csrf(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
        raise HTTPException(403, "CSRF token missing or wrong; reload the login page")
    address = request.client.host if request.client else "unknown"
    name = username[:64]
    outcome = web.auth.login(name, password, address)
    if outcome.retry_after > 0:
        log.info("web_login_throttled", user=name, reason=outcome.reason,
                 retry_after_s=round(outcome.retry_after, 1))
        page = _login_page(web, request, next, "busy" if outcome.reason == "busy" else "throttled", status=429)
        page.headers["Retry-After"] = str(max(1, math.ceil(outcome.retry_after)))
        return page
    if outcome.role is None:
        log.info("web_login_failed", user=name)
        return RedirectResponse(f"/login?error=1&next={quote(safe_next(next), safe='')}", status_code=303)
    cookie = web.auth.new_session(name, outcome.role)
    log.info("web_login", user=name, role=outcome.role)
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, cookie, max_age=web.auth.max_age, httponly=True, samesite="lax",
                    secure=web.auth.secure_cookies(request.url.scheme), path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout")
def logout(web: WebDep, p: ViewerPage, csrf_token: str = Form("")) -> Response:
    require_form_csrf(p, csrf_token)
    web.auth.end_session(p)
    log.info("web_logout", user=p.name)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp
