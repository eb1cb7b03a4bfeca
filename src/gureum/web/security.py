"""Headers every dashboard response carries, and the static files served with them.

The pages run no inline script and load nothing from another origin, so the policy can be
strict: a script injected into a page by a bug in a template would still not run.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def secure(response: Response, *, cache: str = "no-store") -> Response:
    response.headers.update(HEADERS)
    response.headers["Cache-Control"] = cache
    return response


class SecureStatic(StaticFiles):
    """Vendored and own assets; revalidated (ETag) rather than cached blind, so an upgrade
    of the server is seen at the next load."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        return secure(await super().get_response(path, scope), cache="no-cache")
