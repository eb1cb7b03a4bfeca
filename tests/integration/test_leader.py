"""Leader election: of the API servers on one database exactly one runs the controllers, a
dead leader is replaced within seconds by one with a higher epoch, and a deposed leader's late
write is refused. Several servers need PostgreSQL (run when GUREUM_TEST_DATABASE_URL is set);
on SQLite the one server leads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from gureum.client import Client
from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.db.session import Database
from gureum.server.db.tables_leases import ControllerLease
from gureum.server.leader import Leadership, NotLeader
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import PG_URL, free_port

needs_pg = pytest.mark.skipif(not PG_URL, reason="several API servers need PostgreSQL")
on_pg = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _settings(tmp_path: Path, database_url: str, name: str) -> Settings:
    home = tmp_path / name
    return Settings(home=home, database_url=database_url, artifacts=str(tmp_path / "artifacts"))


def _lead(http: TestClient) -> tuple[bool, int | None]:
    ready = http.get("/v1/health/ready").json()
    assert http.get("/v1/health").json()["leader"] is ready["leader"]
    return ready["leader"], ready["leader_epoch"]


def test_the_only_server_on_sqlite_leads_and_says_so(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'g.db'}", "home")
    app = create_app(settings)
    token = bootstrap(app.state.db)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        assert _lead(http) == (True, 1)
        metrics = http.get("/v1/metrics").text
        assert "gureum_controller_leader 1.0" in metrics
        assert "gureum_controller_epoch 1.0" in metrics
        assert app.state.budgets.loop.term == 1  # its controllers tick in epoch 1
    # Stopped cleanly, it handed the lease back: the next server leads at once, one term on.
    again = create_app(settings)
    with TestClient(again) as http:
        http.headers["Authorization"] = f"Bearer {token}"
        assert _lead(http) == (True, 2)


@needs_pg
@on_pg
def test_two_servers_one_leads_and_a_stopped_leader_is_replaced(
    tmp_path: Path, database_url: str
) -> None:
    a = create_app(_settings(tmp_path, database_url, "a"))
    b = create_app(_settings(tmp_path, database_url, "b"))
    token = bootstrap(a.state.db)
    with TestClient(a) as ha:
        ha.headers["Authorization"] = f"Bearer {token}"
        assert _lead(ha) == (True, 1)
        with TestClient(b) as hb:
            hb.headers["Authorization"] = f"Bearer {token}"
            time.sleep(1.5)  # a renewal or two: the leader stays, the other waits
            assert _lead(ha) == (True, 1) and _lead(hb) == (False, None)
            assert "gureum_controller_leader 0.0" in hb.get("/v1/metrics").text
            assert b.state.budgets.loop.term is None  # its controllers do not tick
            # The follower serves the REST API in full: a write through it is the leader's.
            made = hb.post("/v1/workspaces", json={"name": "via-follower"})
            assert made.status_code == 201, made.text
            assert ha.get("/v1/workspaces/via-follower").status_code == 200
        # b stopped: a leads on, untouched.
        assert _lead(ha) == (True, 1)
    # a stopped: a server started now leads at once, in a later epoch.
    c = create_app(_settings(tmp_path, database_url, "c"))
    with TestClient(c) as hc:
        hc.headers["Authorization"] = f"Bearer {token}"
        assert _lead(hc) == (True, 2)


@needs_pg
@on_pg
def test_a_deposed_leaders_late_write_is_refused(database_url: str) -> None:
    """A leader cut off from its lock's connection (or paused) and then woken up still
    believes it leads: the database refuses its write, and nothing of it is kept."""
    db_a, db_b = Database(database_url), Database(database_url)
    a = Leadership(db_a, lease_s=30.0, renew_s=1.0)  # a's own view would last 29 s
    b = Leadership(db_b)
    a.started = b.started = True  # in the election, stepped by hand
    try:
        a.step()
        b.step()
        assert (a.epoch, b.epoch) == (1, None)
        fenced_a = a.fenced(db_a)
        with fenced_a.write() as s:  # a leads: its write goes through
            s.execute(text("UPDATE controller_leases SET renewed_at = renewed_at"))
        # a's advisory connection dies (a network cut): b gets the lock and takes over.
        with db_b.write() as s:
            pids = s.scalars(
                text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).all()
            assert len(pids) == 1
            s.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
        _until(lambda: (b.step(), b.epoch)[1] == 2, 10, "b to take over")
        assert a.epoch == 1  # a has not noticed yet
        with pytest.raises(NotLeader, match="taken over"), fenced_a.write() as s:
            s.add(ControllerLease(name="late-write", epoch=0, renewed_at=0.0, expires_at=0.0))
        with db_b.read() as s:
            assert s.get(ControllerLease, "late-write") is None
        assert a.epoch is None  # refused once, it steps down
        a.step()  # and stays down while b renews
        assert (a.epoch, b.epoch) == (None, 2)
    finally:
        a.stop()
        b.stop()
        db_a.dispose()
        db_b.dispose()


@needs_pg
@on_pg
def test_a_paused_leader_is_replaced_and_steps_down_when_it_wakes(database_url: str) -> None:
    """Paused (SIGSTOP, a long GC), a leader keeps its connection and so its advisory lock:
    its lease runs out and another server takes over; woken, it steps down for good."""
    db_a, db_b = Database(database_url), Database(database_url)
    a = Leadership(db_a, lease_s=2.0, renew_s=0.5)
    b = Leadership(db_b, lease_s=2.0, renew_s=0.5)
    a.started = b.started = True
    try:
        a.step()
        b.step()
        assert (a.epoch, b.epoch) == (1, None)
        # a is paused now (not stepped): b takes over once a's lease has run out.
        _until(lambda: (b.step(), b.epoch)[1] == 2, 10, "b to take over")
        assert a.epoch is None  # woken: its own clock says its lease is over
        with pytest.raises(NotLeader), a.fenced(db_a).write():
            pass
        for _ in range(12):  # 3 s of both renewing: b keeps the lead, a never takes it back
            a.step()
            b.step()
            assert (a.epoch, b.epoch) == (None, 2)
            time.sleep(0.25)
        with db_b.read() as s:  # and b holds the advisory lock a let go of
            holders = s.scalars(
                text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
            ).all()
        assert len(holders) == 1
    finally:
        a.stop()
        b.stop()
        db_a.dispose()
        db_b.dispose()


# -- real processes ---------------------------------------------------------------------------


class Server:
    """``python -m gureum.server.main`` (what `gureum up --foreground` runs) on a free port."""

    def __init__(
        self, tmp_path: Path, database_url: str, name: str, ray: str = "", serve_port: str = ""
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "GUREUM_HOME": str(tmp_path / "home"),  # one home: the servers share their keys
            "GUREUM_DATABASE_URL": database_url,
            "GUREUM_ARTIFACTS": str(tmp_path / "artifacts"),
            "GUREUM_PORT": str(self.port),
            "GUREUM_RAY_ADDRESS": ray,
            "GUREUM_SERVE_PORT": serve_port or str(free_port()),
        }
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gureum.server.main"],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/v1/health", timeout=2)
        except httpx.TransportError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def wait_up(self, timeout: float = 90) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            return self.health() is not None

        _until(up, timeout, f"the server on {self.port}")

    def leads(self) -> bool:
        h = self.health()
        return bool(h and h["leader"])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def servers(tmp_path: Path, database_url: str) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


TICKS = 6
TICKER = f"""
import time
for i in range({TICKS}):
    print(f"tick {{i}}", flush=True)
    time.sleep(1)
"""


@needs_pg
@on_pg
@pytest.mark.ray
def test_leader_killed_mid_run_is_replaced_and_no_job_runs_twice(
    tmp_path: Path, database_url: str, ray_cluster: str, servers: list[Server]
) -> None:
    db = Database(database_url)
    token = bootstrap(db)
    db.dispose()
    assert token is not None
    code = tmp_path / "ticker"
    code.mkdir()
    (code / "main.py").write_text(TICKER)
    serve_port = str(free_port())  # Ray Serve keeps the first server's options: one port
    for name in ("a", "b"):  # started together: either may win
        servers.append(Server(tmp_path, database_url, name, ray_cluster, serve_port))
    for server in servers:
        server.wait_up()
    # Started together, the lease may change hands once (the advisory lock's holder takes it
    # over; the other believes it leads until its local lease runs out, its writes fenced).
    _until(lambda: sum(s.leads() for s in servers) == 1, 15, "exactly one leader")
    a, b = servers if servers[0].leads() else servers[::-1]
    assert a.leads() and not b.leads()
    ca, cb = Client(a.url, token), Client(b.url, token)
    jobs = [ca.jobs.train("script", None, code_dir=code, resources={"cpus": 0.5})]
    # Submitted to the follower: only the leader's controller starts it (no wake-up needed).
    jobs += [cb.jobs.train("script", None, code_dir=code, resources={"cpus": 0.5})]
    jobs += [ca.jobs.train("script", None, code_dir=code, resources={"cpus": 0.5})]
    _until(lambda: all("tick 1" in cb.jobs.logs(j.id)[0] for j in jobs), 60, "every job to run")
    a.kill()  # mid-run, and (it ticks four times a second) most likely mid-tick
    killed = time.monotonic()
    _until(b.leads, 15, "b to take over")
    assert time.monotonic() - killed < 5.0  # the dead leader's lock went with its connection
    assert cb.ready()["leader_epoch"] == 2
    jobs.append(cb.jobs.train("script", None, code_dir=code, resources={"cpus": 0.5}))
    for job in jobs:
        done = cb.jobs.wait(job.id, poll_s=0.3, timeout_s=90)
        events = [f"{e.kind}: {e.message}" for e in cb.jobs.events(job.id)]
        assert done.state == "succeeded", (done.error, events)
        # Started once and run once: one attempt, one start, one running worker.
        assert done.attempt == 1, events
        assert sum(e.startswith("state: starting") for e in events) == 1, events
        assert sum(e.startswith("state: running") for e in events) == 1, events
        log = cb.jobs.logs(job.id)[0]
        assert [log.count(f"tick {i}") for i in range(TICKS)] == [1] * TICKS, log
