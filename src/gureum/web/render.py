"""Templates, the signed-in browser as the pages see it, and how pages answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from gureum import __version__
from gureum.server import sessions
from gureum.server.auth import Authenticator, Principal, at_least
from gureum.server.errors import Unauthorized
from gureum.web.forms import train_recipes, try_kind
from gureum.web.security import secure

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "—"
    return _duration(((end or datetime.now(start.tzinfo)) - start).total_seconds())


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"  # not reached


def _metric(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:.4g}"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value a template prints is escaped, names and messages included
    undefined=jinja2.StrictUndefined,
)
_env.filters.update(when=_when, duration=_duration, money=_money, size=_size, metric=_metric)
_env.globals.update(took=_took, version=__version__)
_env.globals.update(train_recipes=train_recipes, try_kind=try_kind)  # the action forms
templates = Jinja2Templates(env=_env)


@dataclass(frozen=True)
class Signed:
    """Who the browser is signed in as, from the session's key as the database has it now."""

    principal: Principal
    csrf: str

    @property
    def can_act(self) -> bool:
        return at_least(self.principal.role, "developer")

    @property
    def can_admin(self) -> bool:
        return at_least(self.principal.role, "admin")


class SignInRequired(Exception):
    """A page needs a session: back to ``form`` (the members' or the portal's sign-in), and
    the ended session's ``cookie`` dropped."""

    def __init__(
        self, next_path: str, ended: bool, form: str = "/login", cookie: str = sessions.COOKIE
    ) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.ended = ended
        self.form = form
        self.cookie = cookie


def safe_next(value: str | None) -> str:
    """Only a path of this site: no open redirect through ``?next=``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def signed_in(request: Request) -> Signed:
    """Page dependency: the session's principal, or a redirect to the sign-in form."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    token = request.cookies.get(sessions.COOKIE)
    if not token:
        raise SignInRequired(here, ended=False)
    auth: Authenticator = request.app.state.auth
    try:
        principal = sessions.session_principal(request.app.state.db, auth, token)
    except Unauthorized as exc:
        raise SignInRequired(here, ended=True) from exc
    return Signed(principal, sessions.csrf_token(token))


def to_sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    url = f"{exc.form}?next={quote(exc.next_path, safe='')}" + ("&ended=1" if exc.ended else "")
    response = RedirectResponse(url, status_code=303)
    if exc.ended:
        response.delete_cookie(exc.cookie, path="/" if exc.form == "/login" else "/portal")
    return secure(response)


def page(
    request: Request,
    name: str,
    signed: Signed | None,
    status: int = 200,
    **context: Any,
) -> Response:
    ctx: dict[str, Any] = {"signed": signed, "nav": "", **context}
    return secure(templates.TemplateResponse(request, name, ctx, status_code=status))


def error_page(request: Request, signed: Signed | None, status: int, message: str) -> Response:
    titles = {403: "Not allowed", 404: "Not found"}
    title = titles.get(status, "Something went wrong")
    return page(request, "error.html", signed, status, title=title, message=message)
