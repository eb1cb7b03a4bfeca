"""The two contenders of bench_metadata_api, as uvicorn factories.

``ours`` is the real gureum app. ``bare`` is what a team would write by hand with FastAPI and
SQLAlchemy: the same query on the same database, the same response model, no auth, no
pagination cursor, no error shaping.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from gureum.config import Settings
from gureum.schemas.datasets import DatasetOut
from gureum.server.app import create_app
from gureum.server.db.session import make_engine
from gureum.server.db.tables import Dataset, DatasetVersion


def ours() -> FastAPI:
    return create_app(
        Settings(home=Path(os.environ["BENCH_HOME"]), database_url=os.environ["BENCH_DB_URL"])
    )


def bare() -> FastAPI:
    engine = make_engine(os.environ["BENCH_DB_URL"])
    sessions = sessionmaker(engine)
    workspace_id = int(os.environ["BENCH_WORKSPACE_ID"])
    app = FastAPI()
    v = DatasetVersion
    where = v.dataset_id == Dataset.id
    query = (
        select(
            Dataset.name,
            Dataset.description,
            Dataset.created_at,
            select(func.max(v.version)).where(where).scalar_subquery().label("latest"),
            select(func.count(v.id)).where(where).scalar_subquery().label("count"),
            select(func.max(v.created_at)).where(where).scalar_subquery().label("updated"),
        )
        .where(Dataset.workspace_id == workspace_id)
        .order_by(Dataset.name)
        .limit(51)
    )

    @app.get("/datasets")
    def list_datasets() -> list[DatasetOut]:
        with sessions() as s:
            rows = s.execute(query).all()[:50]
        return [
            DatasetOut(
                name=r.name,
                description=r.description,
                latest_version=r.latest,
                version_count=r.count,
                created_at=r.created_at,
                updated_at=r.updated or r.created_at,
            )
            for r in rows
        ]

    return app
