"""The consumer portal at ``/portal``: a team's customer signs in with its consumer key and
sees its own usage, invoices and limits, and rotates its key.

Its session is its own kind (``server/portal_sessions.py``): the cookie ``gureum_portal`` is
scoped to ``/portal`` (a browser never even sends it to ``/v1``), the JSON routes under
``/portal/api/`` accept only it, and the members' API never reads it. Changes need the
portal page's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gureum.schemas.consumers import PERIOD_PATTERN, InvoiceList, UsageReport
from gureum.server import portal_sessions as ps
from gureum.server.errors import ApiError, Forbidden, Unauthorized
from gureum.server.services import portal as svc
from gureum.web.render import SignInRequired, page, safe_next
from gureum.web.security import secure
from gureum.web.signin import refused, signed_in_to, signed_out

router = APIRouter(prefix="/portal", include_in_schema=False)
PLAIN = (
    "That consumer key was not accepted: it is unknown, revoked, or its account is disabled. "
    "Check that you pasted the whole key (it starts with gck_)."
)


@dataclass(frozen=True)
class PortalSigned:
    """The signed-in customer as the portal's pages see it."""

    consumer: ps.PortalConsumer
    csrf: str


def _portal_next(value: str | None) -> str:
    path = safe_next(value)
    return path if path == "/portal" or path.startswith("/portal/") else "/portal"


def portal_signed(request: Request) -> PortalSigned:
    """Page dependency: the portal session's consumer, or its sign-in form."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    token = request.cookies.get(ps.COOKIE)
    if not token:
        raise SignInRequired(here, ended=False, form="/portal/login", cookie=ps.COOKIE)
    try:
        who = ps.session_consumer(request.app.state.db, token)
    except Unauthorized as exc:
        raise SignInRequired(here, ended=True, form="/portal/login", cookie=ps.COOKIE) from exc
    return PortalSigned(who, ps.csrf_token(token))


def portal_caller(request: Request) -> ps.PortalConsumer:
    """JSON dependency: only a portal session (never a member's cookie or key); a change
    must carry the session's CSRF token."""
    token = request.cookies.get(ps.COOKIE)
    if not token:
        raise Unauthorized("sign in to the consumer portal with your consumer key")
    who = ps.session_consumer(request.app.state.db, token)
    if request.method not in ("GET", "HEAD") and not ps.csrf_ok(
        token, request.headers.get("x-csrf-token")
    ):
        raise Forbidden("this request came without the portal page's CSRF token")
    return who


Signed = Annotated[PortalSigned, Depends(portal_signed)]
Caller = Annotated[ps.PortalConsumer, Depends(portal_caller)]
Period = Annotated[str | None, Query(max_length=7, pattern=PERIOD_PATTERN)]


def _form(
    request: Request, message: str | None, next_path: str, status: int = 200, notice: str = ""
) -> Response:
    return page(
        request,
        "portal_login.html",
        None,
        status,
        portal=None,
        title="Customer sign in",
        message=message,
        notice=notice,
        next_path=next_path,
    )


@router.get("/login")
def login_form(request: Request, next: str | None = None, ended: int = 0, out: int = 0) -> Response:
    notice = ""
    if ended:
        notice = "Your session has ended (signed out, expired, or its key was rotated or revoked)."
    elif out:
        notice = "You are signed out."
    return _form(request, None, _portal_next(next), notice=notice)


@router.post("/login")
async def login(
    request: Request,
    consumer_key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/portal",
) -> Response:
    next_path = _portal_next(next)
    key = consumer_key.strip()
    refusal = refused(request, key, "Enter your consumer key to sign in.", PLAIN)
    if refusal is not None:
        return _form(request, refusal[0], next_path, refusal[1])
    try:
        opened = await run_in_threadpool(ps.open_session, request.app.state.db, key)
    except Unauthorized:
        return _form(request, PLAIN, next_path, 401)
    return signed_in_to(request, next_path, ps.COOKIE, opened.token, opened.expires_at, "/portal")


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    return await signed_out(request, ps.COOKIE, "/portal", csrf_token, ps.csrf_ok, ps.close_session)


@router.get("")
def home(
    request: Request, signed: Signed, period: Annotated[str, Query(max_length=16)] = ""
) -> Response:
    db = request.app.state.db
    try:
        limits = svc.limits(db, signed.consumer)
        report = svc.usage_report(db, signed.consumer)
        bills = svc.invoice_list(db, signed.consumer, period or None)
    except ApiError as exc:
        return page(
            request,
            "error.html",
            None,
            exc.status,
            portal=signed,
            title="Not found" if exc.status == 404 else "Something went wrong",
            message=exc.message,
        )
    return page(
        request,
        "portal.html",
        None,
        portal=signed,
        title="Your usage",
        limits=limits,
        usage=report,
        invoices=bills,
        period=bills.period,
    )


@router.get("/api/limits")
def api_limits(request: Request, who: Caller) -> svc.Limits:
    return svc.limits(request.app.state.db, who)


@router.get("/api/usage")
def api_usage(request: Request, who: Caller) -> UsageReport:
    return svc.usage_report(request.app.state.db, who)


@router.get("/api/invoices")
def api_invoices(request: Request, who: Caller, period: Period = None) -> InvoiceList:
    return svc.invoice_list(request.app.state.db, who, period)


@router.post("/api/key/rotate")
def api_rotate(request: Request, who: Caller) -> Response:
    """A new key, shown once; the old key is revoked and its other sessions end."""
    token = request.cookies.get(ps.COOKIE, "")
    rotated, full = ps.rotate(request.app.state.db, token)
    body = svc.KeyRotated(consumer=rotated.name, key_id=rotated.key_id, token=full)
    return secure(Response(body.model_dump_json(), media_type="application/json"))
