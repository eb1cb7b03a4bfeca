"""The SQLite engine's connections come back from the pool fit for a write transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from gureum.server.db.session import Database


def test_a_half_read_result_does_not_poison_the_pooled_connection(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    db = Database(f"sqlite:///{path}")
    with db.write() as s:
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1), (2), (3)"))
    with db.read() as s:
        leaked = s.execute(text("SELECT x FROM t"))  # kept alive, read no further
        assert leaked.fetchone() == (1,)
        raw = s.connection().connection.dbapi_connection
    other = sqlite3.connect(path, timeout=30, isolation_level=None)
    other.execute("INSERT INTO t VALUES (4)")  # the database moves past the leaked snapshot
    other.close()
    assert raw is not None
    # Without closing the leaked cursor at check-in this fails at once: SQLITE_BUSY_SNAPSHOT.
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("ROLLBACK")
    with db.write() as s:
        s.execute(text("INSERT INTO t VALUES (5)"))
    db.dispose()
