"""What datasets and models share: a named, workspace-scoped row created on its first version,
and version numbers handed out by an atomic counter.

Two concurrent first pushes both end up with the one row (the loser of the unique-constraint
race reads the winner's), and ``UPDATE ... RETURNING`` gives every push its own number on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.server.auth import Principal
from gureum.server.db.tables import Dataset, Model

Versioned = TypeVar("Versioned", Dataset, Model)


def get_or_create(s: Session, table: type[Versioned], principal: Principal, name: str) -> Versioned:
    stmt = select(table).where(table.workspace_id == principal.workspace_id, table.name == name)
    row = s.scalar(stmt)
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = table(
                workspace_id=principal.workspace_id, name=name, created_by=principal.user_id or None
            )
            s.add(row)
    except IntegrityError:
        row = s.scalar(stmt)
        if row is None:  # pragma: no cover - the conflicting row committed before we read
            raise
    return row


def next_version(s: Session, table: type[Versioned], row_id: int) -> int | None:
    """The next version number of row ``row_id``; None if the row was deleted meanwhile."""
    stmt = (
        update(table)
        .where(table.id == row_id)
        .values(version_counter=table.version_counter + 1)
        .returning(table.version_counter)
        .execution_options(synchronize_session=False)
    )
    number = s.execute(stmt).scalar()
    return None if number is None else int(number)
