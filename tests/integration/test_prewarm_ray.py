"""Pre-warm on a real Ray Serve: an endpoint with ``prewarm`` on whose usage history recorded a
peak a week ago, two minutes from now, gets its minimum raised to the replicas that peak needed
before it comes: Ray Serve runs them, the endpoint says so and its events record it."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gureum import samples
from gureum.client import Client
from gureum.recipes import LocalDataset, LocalRunContext, train_and_evaluate
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Endpoint, UsageRecord
from gureum.server.services.bootstrap import bootstrap
from tests.integration.test_serving_ray import live_on_ray, wait_for
from tests.integration.trained_models import register_trained

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_prewarm_raises_min_replicas_ahead_of_a_recorded_peak(
    tmp_path: Path, ray_cluster: str, database_url: str
) -> None:
    samples.write("tabular", tmp_path / "data", count=200)
    trained = train_and_evaluate(
        LocalRunContext(tmp_path / "run"),
        "tabular",
        {"max_iter": 10, "target": "returned"},
        LocalDataset.from_folder(tmp_path / "data"),
    )
    with live_on_ray(tmp_path, ray_cluster, database_url) as live:
        db = live.app.state.db
        token = bootstrap(db)
        assert token is not None
        client = Client(live.url, token)
        register_trained(client, db, "orders", trained.train.model_dir, recipe="tabular")
        scaling = {"min_replicas": 1, "max_replicas": 2, "prewarm": True, "prewarm_lead_s": 600}
        config = {"resources": {"cpus": 0.1}, "autoscaling": scaling}
        client.endpoints.deploy("warm", "orders", config=config, wait=True, timeout_s=120)
        assert client.endpoints.get("warm").replicas.primary == 1
        # A week ago, at two minutes from now: 240 requests a minute of one second each (4 in
        # flight: 2 replicas at the target of 2).
        peak = (utcnow() + timedelta(minutes=2)).replace(second=0, microsecond=0)
        with db.write() as s:
            ep = s.scalar(select(Endpoint).where(Endpoint.name == "warm"))
            assert ep is not None
            s.add_all(
                UsageRecord(
                    id=secrets.token_hex(10),
                    workspace_id=ep.workspace_id,
                    time=peak - timedelta(weeks=1) + timedelta(seconds=i / 5),
                    consumer_name="c",
                    endpoint_id=ep.id,
                    endpoint_name=ep.name,
                    model_label="orders:1",
                    route="predict",
                    status=200,
                    latency_ms=1000.0,
                )
                for i in range(240)
            )
        live.app.state.serving.controller.prewarm.forget()  # read the history now
        wait_for(
            lambda: client.endpoints.get("warm").replicas.primary == 2,
            timeout=60,
            what="a second replica started ahead of the peak",
        )
        out = client.endpoints.get("warm")
        assert out.message.startswith("pre-warmed: min replicas 2"), out.message
        assert out.config.autoscaling.min_replicas == 1  # the setting stays
        events = [e for e in client.endpoints.events("warm") if e.kind == "prewarm"]
        assert events and events[-1].data["min_replicas"] == 2
        client.endpoints.delete("warm")
