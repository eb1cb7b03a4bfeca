"""The web dashboard, served by the control plane at ``/`` on the API's port.

Pages are rendered on the server (Jinja2); small scripts under ``static/`` poll the REST API
with the session cookie for the live parts; charts use the vendored uPlot. No asset comes from
another origin and no build step is needed.
"""

from __future__ import annotations

from fastapi import FastAPI

from gureum.web import (
    catalog,
    downloads,
    pages,
    pages_admin,
    pages_compare,
    pages_costs,
    pages_ops,
    portal,
    signin,
)
from gureum.web.render import STATIC, SignInRequired, to_sign_in
from gureum.web.security import SecureStatic


def install(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, to_sign_in)
    app.mount("/static", SecureStatic(directory=STATIC), name="static")
    app.include_router(signin.router)
    app.include_router(pages_compare.router)  # before /jobs/{job_id}
    app.include_router(downloads.router)
    app.include_router(pages.router)
    app.include_router(catalog.router)
    app.include_router(pages_ops.router)
    app.include_router(pages_costs.router)
    app.include_router(pages_admin.router)
    app.include_router(portal.router)
