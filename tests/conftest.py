"""Shared fixtures: a fresh database per test (SQLite always, PostgreSQL when
GUREUM_TEST_DATABASE_URL is set), an app, its bootstrap admin key and SDK clients.

PostgreSQL tests never touch the database named in the URL: each test gets its own database
cloned from a migrated template, dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gureum import Client
from gureum.compute import ray_backend
from gureum.compute.local_ray import LOCAL_AUTH, RayHead, start_head, stop_head
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.db.migrate import upgrade
from gureum.server.db.session import make_engine
from gureum.server.services.bootstrap import bootstrap

# Drivers joining the session's own head (see compute.local_ray.LOCAL_AUTH).
os.environ.update(LOCAL_AUTH)
# A stopped replica behind HAProxy drains 30 s by default (for outside load balancers); the
# tests' HAProxy is local and told at once, and every deleted endpoint would cost 30 s.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "3")
PG_URL = os.environ.get("GUREUM_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port never handed out before in this session: two picks in a row can get the
    same number from the kernel, and a cloud given it twice (API and data plane) fails to
    start (HAProxy: "failed to start their listeners")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class ThreadedServer:
    """An ASGI app on a real uvicorn in a thread of this process. ``stop`` returns only once
    the server and its lifespan (the app's controllers) have ended: a server that outlived its
    test kept applying its endpoints to the shared Ray cluster and broke the next module."""

    def __init__(self, app: object, port: int, start_timeout: float = 60) -> None:
        self.port = port
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=port,
            log_level="warning",
            # Replicas hold connections to the control plane; do not wait for them forever.
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 90) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)
        assert not self.thread.is_alive(), f"the server on port {self.port} did not stop"


# Artifacts on S3 (tests/integration/test_s3_artifacts.py): the tests that use it start a local
# S3 server (moto) on this port. The variables are set here, before the session's Ray head
# starts, so that its workers and replicas see them as a deployment's nodes would.
S3_PORT = free_port()
os.environ.update(
    {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "gureum-test",
        "AWS_SECRET_ACCESS_KEY": "gureum-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)


def _pg_admin_url() -> str:
    return make_url(PG_URL).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dbtemplate") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    if not PG_URL:
        yield None
        return
    name = f"gureum_tmpl_{secrets.token_hex(4)}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    pg_template: str | None,
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "gureum.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    assert pg_template is not None
    name = f"gureum_t_{secrets.token_hex(6)}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    home = tmp_path / "home"
    return Settings(home=home, database_url=database_url, artifacts=str(home / "artifacts"))


@dataclass
class Cloud:
    app: FastAPI
    settings: Settings
    admin_key: str

    def client(self, key: str | None = None) -> Client:
        """An SDK client going through the ASGI app in-process."""
        http = TestClient(self.app, base_url="http://testserver", raise_server_exceptions=False)
        return Client("http://testserver", key or self.admin_key, http=http)

    def http(self, key: str | None = None) -> TestClient:
        """A raw HTTP client (for testing the REST surface itself)."""
        c = TestClient(self.app, raise_server_exceptions=False)
        if key is not False:
            c.headers["Authorization"] = f"Bearer {key or self.admin_key}"
        return c


@pytest.fixture
def cloud(settings: Settings) -> Iterator[Cloud]:
    app = create_app(settings, migrate=True)
    token = bootstrap(app.state.db)
    assert token is not None
    yield Cloud(app, settings, token)
    app.state.db.dispose()


@dataclass
class LiveServer:
    url: str
    cloud: Cloud

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, key or self.cloud.admin_key)


@pytest.fixture
def live_server(cloud: Cloud) -> Iterator[LiveServer]:
    """The same app served by a real uvicorn on a free port (real streaming, real sockets)."""
    server = ThreadedServer(cloud.app, free_port())
    yield LiveServer(server.url, cloud)
    server.stop()


# One real local Ray head for the whole test session, started only when a test asks for it.
# Enough logical CPUs for a few concurrent test tasks; a small object store to be a good
# neighbour on a shared machine. Exactly this head is stopped at the end (never `ray stop`).
TEST_NUM_CPUS = 4
TEST_OBJECT_STORE_BYTES = 512 * 1024**2


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    temp_dir = Path(tempfile.mkdtemp(prefix="gureum-ray-t", dir="/tmp"))
    head = start_head(
        temp_dir,
        tmp_path_factory.mktemp("ray-logs") / "ray.log",
        num_cpus=TEST_NUM_CPUS,
        object_store_memory=TEST_OBJECT_STORE_BYTES,
    )
    try:
        yield head
    finally:
        # This process joined the head as a driver (in-process servers): leave before the head
        # goes, or Ray's core worker tears down against a dead GCS at interpreter exit.
        ray_backend.disconnect()
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_head: RayHead) -> str:
    """The address (host:port) of the session's local Ray head."""
    return ray_head.address


# The suite's verdict is final once pytest has reported it. Native libraries loaded by the
# tests (Ray's core worker and gRPC threads, torch's thread pools) have crashed the interpreter
# during its own teardown after every test had passed (CI: "1250 passed", then SIGSEGV), which
# turned a green run red. Leave with pytest's own exit status (5 for "no tests" stays 5) right
# after the last unconfigure hook.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status[:] = [int(exitstatus)]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _exit_status:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[0])
