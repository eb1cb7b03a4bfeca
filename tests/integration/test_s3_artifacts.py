"""Artifacts on S3 (issue 13, item 6): the whole dataset, job and serving path against a local
S3 server (moto's server mode), as a deployment with ``--artifacts s3://bucket/prefix`` runs
it. Ray workers and replicas reach the bucket through ``AWS_ENDPOINT_URL_S3`` and the usual AWS
variables, which tests/conftest.py sets before the session's Ray head starts (as an operator
sets them on every node); user code in the sandbox never sees them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from gureum import samples
from gureum.client import Client
from gureum.config import Settings
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import S3_PORT, free_port
from tests.integration.test_serving_ray import ROWS, Live, clear_apps, wait_for

pytestmark = pytest.mark.ray

BUCKET = "gureum-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """The local S3 server on the port the session's environment names, with one bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def _keys(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _script(root: Path) -> Path:
    """A script job that reads its dataset and says which AWS variables it can see."""
    code = root / "code"
    code.mkdir()
    (code / "main.py").write_text(
        "import os, pathlib\n"
        "data = pathlib.Path(os.environ['GUREUM_DATA_DIR'])\n"
        "rows = sum(1 for p in data.rglob('*.csv') for _ in p.open()) \n"
        "print('rows', rows)\n"
        "print('aws', sorted(k for k in os.environ if k.startswith('AWS_')))\n"
    )
    return code


def test_datasets_jobs_and_endpoints_keep_their_artifacts_on_s3(
    s3: Any, tmp_path: Path, ray_cluster: str
) -> None:
    prefix = f"clouds/{tmp_path.name}"
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        artifacts=f"s3://{BUCKET}/{prefix}",
        ray_address=ray_cluster,
        port=free_port(),
        serve_port=free_port(),
    )
    clear_apps(ray_cluster)
    live = Live(settings)
    try:
        token = bootstrap(live.app.state.db)
        assert token is not None
        client = Client(f"http://127.0.0.1:{settings.port}", token)
        samples.write("tabular", tmp_path / "orders", count=300)
        pushed = client.datasets.push("orders", tmp_path / "orders")
        assert pushed.version == 1
        blobs = _keys(s3, f"{prefix}/workspaces/")
        assert blobs, "the dataset's files are not in the bucket"

        job = client.jobs.train("tabular", "orders", model="returns", params={"target": "price"})
        done = client.jobs.wait(job.id, poll_s=0.5, timeout_s=180)
        assert done.state == "succeeded", done.error
        assert len(_keys(s3, f"{prefix}/workspaces/")) > len(blobs)  # the model's files too

        script = client.jobs.train("script", "orders", code_dir=_script(tmp_path))
        ran = client.jobs.wait(script.id, poll_s=0.5, timeout_s=180)
        assert ran.state == "succeeded", ran.error
        logs = "".join(client.jobs.logs(script.id)[0])
        assert "rows 301" in logs, logs  # 300 rows and a header, read from the bucket
        assert "aws []" in logs, logs  # the platform's AWS credentials stay outside the sandbox

        stored = set(_keys(s3, prefix))
        deployed = client.endpoints.deploy(
            "orders", "returns", capture={"rate": 1.0}, wait=True, timeout_s=180
        )
        assert deployed.url
        consumer = client.consumers.create("shop")
        for _ in range(3):
            answer = client.endpoints.predict("orders", ROWS, key=consumer.token)
            assert answer.outputs
        # The replica loaded the model from the bucket; its capture sidecar ships there too.
        wait_for(
            lambda: client.endpoints.capture("orders").captured >= 3,
            timeout=60,
            what="the captured calls indexed",
        )
        assert set(_keys(s3, prefix)) > stored  # the batch of captured calls, as a blob
        assert not (home / "artifacts").exists()  # nothing went to the local disk instead
    finally:
        live.stop()
        clear_apps(ray_cluster)
