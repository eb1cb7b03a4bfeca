"""Migration 0007 on a registry with history: versions that a succeeded built-in train job of
their own workspace registered become platform-written and measured; uploads, script jobs'
versions and versions naming a job they do not belong to stay reported. SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import command

from gureum.server.db.migrate import alembic_config
from gureum.server.db.session import make_engine

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _filler(column: sa.Column[Any]) -> Any:
    """A value for a NOT NULL column the test does not care about."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return False
    if isinstance(kind, sa.Integer | sa.Float | sa.Numeric):
        return 0
    if isinstance(kind, sa.DateTime):
        return NOW
    if isinstance(kind, sa.JSON):
        return {}
    return "x"


def insert(conn: sa.Connection, table: sa.Table, **values: Any) -> Any:
    row = dict(values)
    for c in table.columns:
        if c.name in row or c.nullable or c.server_default is not None:
            continue
        if c.primary_key and isinstance(c.type, sa.Integer):
            continue
        row[c.name] = _filler(c)
    result = conn.execute(table.insert().values(**row))
    return result.inserted_primary_key[0] if result.inserted_primary_key else None


def test_existing_versions_are_marked_only_when_a_built_in_job_made_them(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    cfg = alembic_config(database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    meta = sa.MetaData()
    meta.reflect(engine)
    ws, models, versions, jobs = (
        meta.tables[t] for t in ("workspaces", "models", "model_versions", "jobs")
    )
    with engine.begin() as conn:
        a = insert(conn, ws, name="a")
        b = insert(conn, ws, name="b")
        model_a = insert(conn, models, workspace_id=a, name="m")
        model_b = insert(conn, models, workspace_id=b, name="m")
        for job_id, workspace, recipe, state in [
            ("j-built-in", a, "tabular", "succeeded"),
            ("j-script", a, "script", "succeeded"),
            ("j-failed", a, "tabular", "failed"),
            ("j-other-ws", b, "tabular", "succeeded"),
        ]:
            insert(
                conn,
                jobs,
                id=job_id,
                workspace_id=workspace,
                kind="train",
                recipe=recipe,
                state=state,
            )
        cases = {
            1: "j-built-in",  # trusted
            2: "j-script",  # user code wrote it
            3: "j-failed",  # a failed job registers nothing: a claim
            4: "j-other-ws",  # another workspace's job: a claim
            5: None,  # an upload
        }
        for number, job_id in cases.items():
            insert(
                conn,
                versions,
                model_id=model_a,
                version=number,
                job_id=job_id,
                format="gureum",
                metrics={"accuracy": 0.9},
                file_count=1,
                total_bytes=1,
            )
        insert(
            conn,
            versions,
            model_id=model_b,
            version=1,
            job_id="j-built-in",
            format="gureum",
            file_count=1,
            total_bytes=1,
        )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT models.workspace_id, model_versions.version, registered_by_job, "
                "platform_written, metrics_source FROM model_versions JOIN models "
                "ON models.id = model_versions.model_id"
            )
        ).all()
    marks = {(w, v): (bool(r), bool(p), s) for w, v, r, p, s in rows}
    assert marks == {
        (a, 1): (True, True, "measured"),
        (a, 2): (True, False, "reported"),
        (a, 3): (False, False, "reported"),
        (a, 4): (False, False, "reported"),
        (a, 5): (False, False, "reported"),
        (b, 1): (False, False, "reported"),
    }
    engine.dispose()
