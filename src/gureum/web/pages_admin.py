"""Dashboard admin pages (owners and admins of the workspace): its members, the workspaces the
signed-in user sees, the workspace's API keys (never a secret or its hash: the services list
the public key id only) and the audit log.

Rendered from the services ``/v1/users``, ``/v1/workspaces``, ``/v1/keys`` and ``/v1/audit``
call. Revoking a key is a ``DELETE /v1/keys/{id}`` from ``static/ops.js`` with the session's
CSRF token. Anyone below admin gets a 403 page here, as the API refuses them the audit log.
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gureum.server.auth import at_least
from gureum.server.errors import ApiError
from gureum.server.pagination import PageParams
from gureum.server.services import audit, keys, shares, users, workspaces
from gureum.web.pages import PAGE_SIZE, Cursor, SignedIn, _next_href
from gureum.web.render import Signed, error_page, page

router = APIRouter(include_in_schema=False)
DETAILS_CHARS = 300


def _refused(request: Request, signed: Signed) -> Response | None:
    """The 403 page for a key below admin (as the services check: by the key's role)."""
    p = signed.principal
    if at_least(p.role, "admin"):
        return None
    return error_page(
        request,
        signed,
        403,
        f"The admin pages are for the workspace's owners and admins; your key has the {p.role} "
        "role.",
    )


@router.get("/admin")
def admin(request: Request, signed: SignedIn, cursor: Cursor = None) -> Response:
    refused = _refused(request, signed)
    if refused is not None:
        return refused
    db = request.app.state.db
    p = signed.principal
    try:
        members = users.list_members(db, p, PageParams(limit=PAGE_SIZE, cursor=cursor))
        visible = workspaces.list_visible(db, p, PageParams(limit=PAGE_SIZE, cursor=None))
        quotas = workspaces.get_quotas(db, p, p.workspace_name)
        share = shares.get_share(db, p, p.workspace_name)
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "admin.html",
        signed,
        title="Admin",
        nav="admin",
        tab="members",
        members=members.items,
        workspaces=visible.items,
        more_workspaces=visible.next_cursor is not None,
        quotas=quotas,
        share=share,
        # As the services decide: an owner sets its workspace's quotas, a site admin any
        # workspace's quotas and guaranteed share, and creates workspaces.
        can_set_quotas=p.role == "owner" or p.is_site_admin,
        first_page=cursor is None,
        first_href="/admin",
        next_href=_next_href("/admin", members.next_cursor),
    )


@router.get("/admin/keys")
def admin_keys(request: Request, signed: SignedIn, cursor: Cursor = None) -> Response:
    refused = _refused(request, signed)
    if refused is not None:
        return refused
    try:
        listed = keys.list_keys(
            request.app.state.db, signed.principal, PageParams(limit=PAGE_SIZE, cursor=cursor)
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    return page(
        request,
        "admin_keys.html",
        signed,
        title="API keys",
        nav="admin",
        tab="keys",
        keys=listed.items,
        own_key=signed.principal.key_id,
        first_page=cursor is None,
        first_href="/admin/keys",
        next_href=_next_href("/admin/keys", listed.next_cursor),
    )


@router.get("/admin/audit")
def admin_audit(
    request: Request,
    signed: SignedIn,
    action: Annotated[str, Query(max_length=64)] = "",
    cursor: Cursor = None,
) -> Response:
    refused = _refused(request, signed)
    if refused is not None:
        return refused
    if action and not all(c.isalnum() or c in "._-" for c in action):
        return error_page(request, signed, 422, f"{action!r} is not an audit action name.")
    try:
        listed = audit.list_events(
            request.app.state.db,
            signed.principal,
            PageParams(limit=PAGE_SIZE, cursor=cursor),
            action or None,
        )
    except ApiError as exc:
        return error_page(request, signed, exc.status, exc.message)
    rows = [
        (e, json.dumps(e.details, sort_keys=True, default=str)[:DETAILS_CHARS])
        for e in listed.items
    ]
    return page(
        request,
        "admin_audit.html",
        signed,
        title="Audit log",
        nav="admin",
        tab="audit",
        events=rows,
        action=action,
        first_page=cursor is None,
        first_href="/admin/audit" + (f"?{urlencode({'action': action})}" if action else ""),
        next_href=_next_href("/admin/audit", listed.next_cursor, action=action),
    )
