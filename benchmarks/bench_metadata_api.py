"""Metadata API: GET /v1/datasets with 1,000 datasets, gureum vs bare FastAPI + SQLAlchemy.

Both serve the same query from the same database on one uvicorn worker each; wrk (or a Python
loader when wrk is missing) drives them in alternating rounds. Target: ratio >= 0.8.

    .venv/bin/python benchmarks/bench_metadata_api.py [--database-url URL] [--rounds 5]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from benchmarks._util import free_port, load, median, save, start_uvicorn, stop, wait_http
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Workspace
from gureum.server.services.bootstrap import bootstrap

N_DATASETS = 1000


def seed(url: str) -> tuple[str, int]:
    db = Database(url)
    upgrade(db.engine)
    token = bootstrap(db)
    assert token is not None
    now = datetime.now(UTC)
    with db.write() as s:
        ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        assert ws is not None
        s.execute(
            insert(Dataset),
            [
                {
                    "workspace_id": ws,
                    "name": f"dataset-{i:04d}",
                    "description": "",
                    "version_counter": 1,
                    "created_at": now,
                }
                for i in range(N_DATASETS)
            ],
        )
        ids = s.scalars(select(Dataset.id).where(Dataset.workspace_id == ws)).all()
        s.execute(
            insert(DatasetVersion),
            [
                {
                    "dataset_id": d,
                    "version": 1,
                    "kind": "images",
                    "file_count": 10,
                    "total_bytes": 1000,
                    "schema_": {},
                    "split": {},
                    "preview": {},
                    "message": "",
                    "created_at": now,
                }
                for d in ids
            ],
        )
    db.dispose()
    return token, ws


def pg_database(base: str) -> tuple[str, str]:
    name = f"gureum_bench_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False), name


def drop_pg(base: str, name: str) -> None:
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run(url: str, home: Path, rounds: int, seconds: float, connections: int) -> dict[str, object]:
    token, ws = seed(url)
    env = {"BENCH_HOME": str(home), "BENCH_DB_URL": url, "BENCH_WORKSPACE_ID": str(ws)}
    p_ours, p_bare = free_port(), free_port()
    ours = start_uvicorn("benchmarks._metadata_apps:ours", p_ours, env)
    bare = start_uvicorn("benchmarks._metadata_apps:bare", p_bare, env)
    try:
        wait_http(f"http://127.0.0.1:{p_ours}/v1/health")
        wait_http(f"http://127.0.0.1:{p_bare}/datasets")
        url_ours = f"http://127.0.0.1:{p_ours}/v1/datasets"
        url_bare = f"http://127.0.0.1:{p_bare}/datasets"
        auth = {"Authorization": f"Bearer {token}"}
        load(url_ours, auth, 1, connections)  # warm both
        load(url_bare, {}, 1, connections)
        r_ours, r_bare = [], []
        for _ in range(rounds):
            r_ours.append(load(url_ours, auth, seconds, connections))
            r_bare.append(load(url_bare, {}, seconds, connections))
    finally:
        stop(ours)
        stop(bare)
    ratio = median(r_ours) / median(r_bare)
    return {
        "database": make_url(url).get_backend_name(),
        "datasets": N_DATASETS,
        "connections": connections,
        "rounds": rounds,
        "gureum_rps": r_ours,
        "bare_rps": r_bare,
        "gureum_median_rps": round(median(r_ours), 1),
        "bare_median_rps": round(median(r_bare), 1),
        "ratio": round(ratio, 3),
        "target": ">= 0.8",
        "met": ratio >= 0.8,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--database-url", default="", help="a PostgreSQL server URL to also test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        results.append(
            run(f"sqlite:///{home / 'bench.db'}", home, args.rounds, args.seconds, args.connections)
        )
        if args.database_url:
            url, name = pg_database(args.database_url)
            try:
                results.append(run(url, home, args.rounds, args.seconds, args.connections))
            finally:
                drop_pg(args.database_url, name)
    for r in results:
        print(
            f"{r['database']:>10}: gureum {r['gureum_median_rps']} req/s, bare "
            f"{r['bare_median_rps']} req/s, ratio {r['ratio']} (target >= 0.8)"
        )
    print(f"saved {save('metadata_api', {'results': results})}")


if __name__ == "__main__":
    main()
