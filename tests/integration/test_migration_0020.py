"""Migration 0020 on a ledger with records: the per-day totals are filled from them (UTC days,
errors and cold starts counted, units and currencies apart), and one endpoint's records get an
index; a downgrade takes both away. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from gureum.server.db.migrate import alembic_config
from gureum.server.db.session import make_engine
from tests.integration.test_migration_0007 import NOW, insert


def test_existing_usage_records_fill_the_per_day_totals(database_url: str) -> None:
    engine = make_engine(database_url)
    cfg = alembic_config(database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0020-1")
    assert "usage_days" not in sa.inspect(engine).get_table_names()
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    calls = [  # endpoint, time, status, units, unit, amount, currency, cold start
        ("gen", NOW + timedelta(hours=1), 200, 2.0, "image", 0.1, "USD", True),
        ("gen", NOW + timedelta(hours=23, minutes=59), 500, 0.0, "image", 0.0, "USD", False),
        ("gen", NOW + timedelta(days=1), 200, 1.0, "image", 0.1, "USD", False),  # next day
        ("gen", NOW + timedelta(hours=2), 200, 5.0, "token", 0.2, "USD", False),
        ("gen", NOW + timedelta(hours=3), 200, 1.0, "image", 1.0, "EUR", False),
        ("chat", NOW + timedelta(hours=4), 200, 3.0, "image", 0.3, "USD", False),
    ]
    with engine.begin() as conn:
        ws = insert(conn, t["workspaces"], name="a")
        for i, (ep, time, status, units, unit, amount, currency, cold) in enumerate(calls):
            insert(
                conn,
                t["usage_records"],
                id=f"record-{i:04d}",
                workspace_id=ws,
                time=time,
                consumer_name="acme",
                endpoint_name=ep,
                model_label="m:1",
                route="predict",
                status=status,
                units=units,
                unit=unit,
                latency_ms=10.0,
                cold_start=cold,
                amount=amount,
                currency=currency,
            )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    query = (
        "SELECT day, endpoint_name, unit, currency, requests, errors, units, amount, cold_starts"
        " FROM usage_days ORDER BY day, endpoint_name, unit, currency"
    )
    with engine.connect() as conn:
        days = [tuple(r) for r in conn.execute(sa.text(query))]
    first, second = NOW.date().isoformat(), (NOW + timedelta(days=1)).date().isoformat()
    assert [(str(r[0]), *r[1:]) for r in days] == [
        (first, "chat", "image", "USD", 1, 0, 3.0, 0.3, 0),
        (first, "gen", "image", "EUR", 1, 0, 1.0, 1.0, 0),
        (first, "gen", "image", "USD", 2, 1, 2.0, 0.1, 1),
        (first, "gen", "token", "USD", 1, 0, 5.0, 0.2, 0),
        (second, "gen", "image", "USD", 1, 0, 1.0, 0.1, 0),
    ]
    indexed = {i["name"] for i in sa.inspect(engine).get_indexes("usage_records")}
    assert "ix_usage_ws_endpoint_time" in indexed
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0020-1")
    after = sa.inspect(engine)
    assert "usage_days" not in after.get_table_names()
    assert "ix_usage_ws_endpoint_time" not in {
        i["name"] for i in after.get_indexes("usage_records")
    }
    engine.dispose()
