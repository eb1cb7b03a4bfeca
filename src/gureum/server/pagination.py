"""Keyset pagination: stable under concurrent inserts, unlike OFFSET."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Row, Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from gureum.server.errors import BadRequest

T = TypeVar("T")
R = TypeVar("R")
AnySelect = Select[*tuple[Any, ...]]


class PageParams(BaseModel):
    limit: int
    cursor: str | None


Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=512,
        pattern=r"^[A-Za-z0-9_-]+={0,2}$",
        description="next_cursor of the previous page (opaque, URL-safe base64)",
    ),
]


async def page_params(limit: Limit = 50, cursor: Cursor = None) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_cursor(cursor: str) -> Any:
    """The key a cursor was cut at: only what ``encode_cursor`` makes (an id or a name)."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError as exc:
        raise BadRequest("invalid cursor") from exc
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest("invalid cursor")
    return value


def _window(
    stmt: AnySelect, key: InstrumentedAttribute[Any], params: PageParams, descending: bool
) -> AnySelect:
    if params.cursor is not None:
        after = decode_cursor(params.cursor)
        if not isinstance(after, key.type.python_type):  # e.g. a name for an id: a DB error
            raise BadRequest("invalid cursor")
        stmt = stmt.where(key < after if descending else key > after)
    return stmt.order_by(key.desc() if descending else key.asc()).limit(params.limit + 1)


def _cut(
    items: Sequence[R], key: InstrumentedAttribute[Any], params: PageParams
) -> tuple[Sequence[R], str | None]:
    if len(items) <= params.limit:
        return items, None
    items = items[: params.limit]
    return items, encode_cursor(getattr(items[-1], key.key))


def paginate(
    session: Session,
    stmt: Select[T],
    key: InstrumentedAttribute[Any],
    params: PageParams,
    *,
    descending: bool = False,
) -> tuple[Sequence[T], str | None]:
    """One page of ``stmt`` (one entity) ordered by the unique column ``key``, and the cursor."""
    items: Sequence[T] = session.scalars(_window(stmt, key, params, descending)).all()
    return _cut(items, key, params)


def paginate_rows(
    session: Session,
    stmt: AnySelect,
    key: InstrumentedAttribute[Any],
    params: PageParams,
    *,
    descending: bool = False,
) -> tuple[Sequence[Row[Any]], str | None]:
    """``paginate`` for multi-column rows; ``key`` must be among the selected columns."""
    rows = session.execute(_window(stmt, key, params, descending)).all()
    return _cut(rows, key, params)
