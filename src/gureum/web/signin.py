"""Sign in with an API key (traded for a session cookie) and sign out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gureum.server import sessions
from gureum.server.auth import Authenticator
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.errors import Unauthorized
from gureum.web.render import error_page, page, safe_next
from gureum.web.security import secure

router = APIRouter(include_in_schema=False)
MAX_KEY_CHARS = 512

# The authenticator's reasons, said for a person at a sign-in form.
PLAIN = {
    "invalid API key": "That API key was not accepted. Check that you pasted the whole key "
    "(it starts with gk_).",
    "this API key was revoked": "That API key has been revoked. Ask a workspace admin for a "
    "new one.",
    "this API key has expired": "That API key has expired. Ask a workspace admin for a new one.",
}


def _same_origin(request: Request) -> bool:
    """A form post from our own page (browsers send Origin on POST); a missing Origin (an
    old client, a script) is let through: the key itself is the credential."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def refused(request: Request, key: str, empty: str, unknown: str) -> tuple[str, int] | None:
    """Why a key typed into a sign-in form (members' or the portal's) is refused before it is
    looked up, with the status; None when it may be looked up."""
    if not _same_origin(request):
        return "This sign-in did not come from this site's form.", 403
    if not key:
        return empty, 422
    if len(key) > MAX_KEY_CHARS:
        return unknown, 401
    return None


def signed_in_to(
    request: Request, target: str, cookie: str, token: str, expires_at: datetime, path: str
) -> Response:
    """The answer to a sign-in: to ``target`` with the session's cookie (HttpOnly, SameSite
    Strict, scoped to ``path``, Secure over https)."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        cookie,
        token,
        max_age=int((expires_at - utcnow()).total_seconds()),
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return secure(response)


async def signed_out(
    request: Request,
    cookie: str,
    path: str,
    csrf_token: str,
    csrf_ok: Callable[[str, str], bool],
    close: Callable[[Database, str], None],
) -> Response:
    """Sign-out: the session (if any) closed, given the page's CSRF token, and its cookie
    dropped; then the sign-in form under ``path`` says so."""
    token = request.cookies.get(cookie)
    if token:
        if not csrf_ok(token, csrf_token):
            return error_page(request, None, 403, "Sign-out needs the page's form: reload it.")
        await run_in_threadpool(close, request.app.state.db, token)
    response = RedirectResponse(path.rstrip("/") + "/login?out=1", status_code=303)
    response.delete_cookie(cookie, path=path)
    return secure(response)


def _form(
    request: Request, message: str | None, next_path: str, status: int = 200, notice: str = ""
) -> Response:
    return page(
        request,
        "login.html",
        None,
        status,
        title="Sign in",
        message=message,
        notice=notice,
        next_path=next_path,
    )


@router.get("/login")
def login_form(request: Request, next: str | None = None, ended: int = 0, out: int = 0) -> Response:
    notice = ""
    if ended:
        notice = "Your session has ended (signed out elsewhere, expired, or its key was revoked)."
    elif out:
        notice = "You are signed out."
    return _form(request, None, safe_next(next), notice=notice)


@router.post("/login")
async def login(
    request: Request,
    api_key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    next_path = safe_next(next)
    key = api_key.strip()
    refusal = refused(request, key, "Enter an API key to sign in.", PLAIN["invalid API key"])
    if refusal is not None:
        return _form(request, refusal[0], next_path, refusal[1])
    auth: Authenticator = request.app.state.auth
    try:
        opened = await run_in_threadpool(sessions.open_session, request.app.state.db, auth, key)
    except Unauthorized as exc:
        return _form(request, PLAIN.get(exc.message, exc.message), next_path, 401)
    return signed_in_to(request, next_path, sessions.COOKIE, opened.token, opened.expires_at, "/")


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    return await signed_out(
        request, sessions.COOKIE, "/", csrf_token, sessions.csrf_ok, sessions.close_session
    )
