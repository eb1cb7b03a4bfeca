"""A model version page shows its newest validation report (the checks a deploy's first
replica or `gureum models validate` ran, with load, latency and memory against the limits),
and says how to get one when there is none."""

from __future__ import annotations

from sqlalchemy import select

from gureum.server.db.base import utcnow
from gureum.server.db.tables import Model, ModelVersion
from gureum.server.db.tables_validation import ModelValidation
from tests.conftest import Cloud
from tests.integration.page_helpers import model_versions
from tests.integration.test_web_pages import cells, signed


def _report(cloud: Cloud, passed: bool, detail: str) -> None:
    with cloud.app.state.db.write() as s:
        version_id = s.scalar(
            select(ModelVersion.id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == "clf", ModelVersion.version == 1)
        )
        assert version_id is not None
        s.add(
            ModelValidation(
                version_id=version_id,
                kind="manual",
                state="passed" if passed else "failed",
                passed=passed,
                source="validation split of rows:1",
                limits={"max_latency_ms": 500.0, "max_memory_mb": 256.0},
                checks=[
                    {"name": "load", "passed": True, "detail": ""},
                    {"name": "predict", "passed": passed, "detail": detail},
                ],
                load_ms=41.5,
                latency_p50_ms=3.25,
                latency_max_ms=9.0,
                memory_max_mb=12.0,
                message="" if passed else "predict failed",
                finished_at=utcnow(),
            )
        )


def test_a_version_page_shows_its_newest_validation(cloud: Cloud) -> None:
    model_versions(cloud.http(), "clf", [{"accuracy": 0.9}])
    web = signed(cloud)
    page = web.get("/models/clf/versions/1")
    assert page.status_code == 200
    assert "Not validated yet" in page.text and "gureum models validate clf:1" in page.text

    _report(cloud, passed=True, detail="")
    _report(cloud, passed=False, detail="output 3 is not a class the model knows")
    page = web.get("/models/clf/versions/1")
    assert "Not validated yet" not in page.text
    # The newest report, with its checks and measurements against the limits.
    assert cells(page.text, "validation-checks") == [
        ["load", "yes", "—"],
        ["predict", "no", "output 3 is not a class the model knows"],
    ]
    assert "predict failed" in page.text and "run by hand" in page.text
    assert "41.5 ms" in page.text and "limit 500 ms" in page.text and "12.0 MB" in page.text
