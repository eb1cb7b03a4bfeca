"""Migration 0010 on a database with endpoints and consumers: they get no capture settings, a
zero dropped count and stay capturable; the capture and feedback tables come (and go on a
downgrade). SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from gureum.server.db.migrate import alembic_config
from gureum.server.db.session import make_engine
from tests.integration.test_migration_0007 import NOW, insert


def test_existing_endpoints_and_consumers_upgrade_with_capture_off(database_url: str) -> None:
    engine = make_engine(database_url)
    cfg = alembic_config(database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    old = sa.inspect(engine)
    assert not {"captured_requests", "feedback"} & set(old.get_table_names())
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    with engine.begin() as conn:
        ws = insert(conn, t["workspaces"], name="a")
        model = insert(conn, t["models"], workspace_id=ws, name="m")
        version = insert(
            conn, t["model_versions"], model_id=model, version=1, format="gureum", file_count=1
        )
        insert(
            conn,
            t["endpoints"],
            name="shop",
            workspace_id=ws,
            model_id=model,
            version_id=version,
            config={},
            created_at=NOW,
        )
        plan = insert(conn, t["plans"], workspace_id=ws, name="p", endpoints=[])
        insert(conn, t["consumers"], workspace_id=ws, name="acme", plan_id=plan)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        endpoint = conn.execute(sa.text("SELECT capture, capture_dropped FROM endpoints")).one()
        no_capture = conn.execute(sa.text("SELECT no_capture FROM consumers")).scalar_one()
    assert tuple(endpoint) == (None, 0)
    assert no_capture in (False, 0)  # not NULL: a boolean false on both databases
    new = sa.inspect(engine)
    assert {"captured_requests", "captured_blobs", "feedback"} <= set(new.get_table_names())
    indexed = {i["name"] for i in new.get_indexes("captured_requests")}
    assert {
        "ix_captured_requests_endpoint_id",
        "ix_captured_requests_time",
        "ix_captured_requests_object",
    } <= indexed
    assert {i["name"] for i in new.get_indexes("captured_blobs")} == {"ix_captured_blobs_sha256"}
    pk = new.get_pk_constraint("captured_blobs")["constrained_columns"]
    assert sorted(pk) == ["request_id", "sha256"]
    (fk,) = new.get_foreign_keys("captured_blobs")
    assert (fk["referred_table"], fk["options"].get("ondelete")) == ("captured_requests", "CASCADE")
    assert new.get_pk_constraint("feedback")["constrained_columns"] == ["id"]
    assert new.get_pk_constraint("captured_requests")["constrained_columns"] == ["request_id"]

    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    back = sa.inspect(engine)
    assert not {"captured_requests", "captured_blobs", "feedback"} & set(back.get_table_names())
    assert "capture" not in {c["name"] for c in back.get_columns("endpoints")}
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    engine.dispose()
