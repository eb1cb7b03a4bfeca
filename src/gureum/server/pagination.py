"""Keyset pagination: stable under concurrent inserts, unlike OFFSET."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from gureum.server.errors import BadRequest

T = TypeVar("T")


class PageParams(BaseModel):
    limit: int
    cursor: str | None


Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]


async def page_params(limit: Limit = 50, cursor: Cursor = None) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_cursor(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError as exc:
        raise BadRequest("invalid cursor") from exc


def paginate(
    session: Session,
    stmt: Select[T],
    key: InstrumentedAttribute[Any],
    params: PageParams,
    *,
    descending: bool = False,
) -> tuple[Sequence[T], str | None]:
    """Return one page of ``stmt`` ordered by the unique column ``key``, and the next cursor."""
    if params.cursor is not None:
        after = decode_cursor(params.cursor)
        stmt = stmt.where(key < after if descending else key > after)
    stmt = stmt.order_by(key.desc() if descending else key.asc()).limit(params.limit + 1)
    rows = session.scalars(stmt).all()
    if len(rows) <= params.limit:
        return rows, None
    rows = rows[: params.limit]
    return rows, encode_cursor(getattr(rows[-1], key.key))
