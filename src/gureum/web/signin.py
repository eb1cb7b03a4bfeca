"""Sign in with an API key (traded for a session cookie) and sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gureum.server import sessions
from gureum.server.auth import Authenticator
from gureum.server.db.base import utcnow
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
    if not _same_origin(request):
        return _form(request, "This sign-in did not come from this site's form.", next_path, 403)
    key = api_key.strip()
    if not key:
        return _form(request, "Enter an API key to sign in.", next_path, 422)
    if len(key) > MAX_KEY_CHARS:
        return _form(request, PLAIN["invalid API key"], next_path, 401)
    auth: Authenticator = request.app.state.auth
    try:
        opened = await run_in_threadpool(sessions.open_session, request.app.state.db, auth, key)
    except Unauthorized as exc:
        return _form(request, PLAIN.get(exc.message, exc.message), next_path, 401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        opened.token,
        max_age=int((opened.expires_at - utcnow()).total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return secure(response)


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    token = request.cookies.get(sessions.COOKIE)
    if token:
        if not sessions.csrf_ok(token, csrf_token):
            return error_page(request, None, 403, "Sign-out needs the page's form: reload it.")
        await run_in_threadpool(sessions.close_session, request.app.state.db, token)
    response = RedirectResponse("/login?out=1", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return secure(response)
