"""`gureum up` / `status` / `down` as a user runs them: the real CLI in a subprocess, a home
in a temp dir, free ports, and the session's Ray cluster (one test starts its own head).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gureum import Client
from gureum.client.base import load_credentials
from gureum.compute.local_ray import RayHead, head_processes, reachable
from gureum.local.procs import describe
from gureum.local.state import RayState, RunState, load_state, save_state
from tests.conftest import PG_URL, free_port

GUREUM = str(Path(sys.executable).parent / "gureum")


@dataclass
class Cli:
    home: Path

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GUREUM_") and k != "RAY_ADDRESS"
        }
        env["GUREUM_HOME"] = str(self.home)
        return env

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GUREUM, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str, rc: int = 0) -> Any:
        res = self.run(*args, "-o", "json")
        assert res.returncode == rc, res.stdout + res.stderr
        return json.loads(res.stdout)

    def state(self) -> RunState:
        state = load_state(self.home / "run")
        assert state is not None
        return state


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path / "home")
    yield c
    c.run("down")  # whatever a failed test left running


def _whoami(url: str, key: str) -> dict[str, Any]:
    with Client(url, key) as client:
        return client.whoami()


def test_up_status_whoami_down(cli: Cli, ray_cluster: str) -> None:
    port = free_port()
    up = cli.json("up", "--port", str(port), "--ray-address", ray_cluster)
    url = f"http://127.0.0.1:{port}"
    assert up["status"] == "started" and up["url"] == url
    key = up["api_key"]
    assert key.startswith("gk_")
    assert up["ray_address"] == ray_cluster and up["ray_managed"] is False

    creds_file = cli.home / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = load_credentials(cli.home)
    assert creds == {"url": url, "api_key": key, "workspace": "default"}
    me = _whoami(creds["url"], creds["api_key"])
    assert (me["user"], me["workspace"], me["role"]) == ("admin", "default", "owner")
    assert key not in (cli.home / "logs" / "server.log").read_text()

    report = cli.json("status")
    assert report["running"] is True
    assert all(part["ok"] for part in report["parts"].values()), report
    # The only server on its database leads the controllers, and says so.
    assert report["parts"]["server"]["detail"].endswith("; leads the controllers)"), report

    again = cli.run("up", "--port", str(port))
    assert again.returncode == 0
    assert "already running" in again.stdout and url in again.stdout
    assert key not in again.stdout

    server_pid = cli.state().server.pid  # type: ignore[union-attr]
    down = cli.json("down")
    assert down["status"] == "stopped" and len(down["stopped"]) == 1  # the server only
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == "zombie"
    assert reachable(ray_cluster)  # not ours to stop
    assert not (cli.home / "run" / "state.json").exists()

    stopped = cli.run("status")
    assert stopped.returncode == 1 and "down" in stopped.stdout
    assert "not running" in cli.run("down").stdout

    # A later start migrates nothing new, shows no key, and moves the saved URL along.
    port2 = free_port()
    restart = cli.run("up", "--port", str(port2), "--ray-address", ray_cluster)
    assert restart.returncode == 0, restart.stderr
    assert "gk_" not in restart.stdout and "credentials" in restart.stdout
    creds = load_credentials(cli.home)
    assert creds["url"] == f"http://127.0.0.1:{port2}" and creds["api_key"] == key
    assert _whoami(creds["url"], key)["user"] == "admin"
    assert cli.json("down")["status"] == "stopped"


def test_stale_state_does_not_block_up(cli: Cli, ray_cluster: str) -> None:
    # A crash left a state file whose server pid now belongs to an unrelated process.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        ghost = RayHead(
            address="127.0.0.1:1",
            session_id=bystander.pid,
            temp_dir="/tmp/gureum-ray-ghost",
            gcs_port=1,
        )
        save_state(
            cli.home / "run",
            RunState(
                home=str(cli.home),
                url="http://127.0.0.1:1",
                host="127.0.0.1",
                port=1,
                server=describe(bystander.pid, "gureum.server.main"),
                ray=RayState(address=ghost.address, head=ghost),
            ),
        )
        up = cli.json("up", "--port", str(free_port()), "--ray-address", ray_cluster)
        assert up["status"] == "started"
        assert cli.state().server.pid != bystander.pid  # type: ignore[union-attr]
        assert cli.json("down")["status"] == "stopped"
        assert bystander.poll() is None  # never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_own_ray_head_survives_a_server_crash_and_stops_with_down(
    cli: Cli,
    ray_head: RayHead,
) -> None:
    """The one test that starts its own Ray head: detached, reused, stopped exactly."""
    up = cli.json("up", "--port", str(free_port()))
    ray_cluster = ray_head.address
    assert up["ray_managed"] is True and up["ray_address"] != ray_cluster
    state = cli.state()
    assert state.ray is not None and state.ray.head is not None
    head = state.ray.head
    procs = head_processes(head)
    assert procs and reachable(head.address)
    # Detached: its own session, neither ours nor the server's.
    assert head.session_id != os.getsid(0)
    assert state.server is not None and os.getsid(state.server.pid) != head.session_id

    # The server crashes; Ray and its jobs must live on, and the next `up` reuses them.
    os.kill(state.server.pid, signal.SIGKILL)
    crashed = cli.json("status", rc=1)
    assert not crashed["parts"]["server"]["ok"] and crashed["parts"]["ray"]["ok"]
    again = cli.json("up", "--port", str(free_port()))
    assert again["status"] == "started" and again["ray_address"] == head.address

    session_head = ray_head
    session_procs = head_processes(session_head)
    down = cli.json("down")
    assert down["status"] == "stopped" and len(down["stopped"]) == 2
    assert head_processes(head) == [] and not reachable(head.address)
    assert not Path(head.temp_dir).exists()
    # Other people's Ray (here: the session cluster) is untouched.
    assert head_processes(session_head) == session_procs and reachable(ray_cluster)


def test_foreground_serves_and_stops_cleanly_on_sigterm(cli: Cli, ray_cluster: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [GUREUM, "up", "--foreground", "--port", str(port), "--ray-address", ray_cluster],
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        report = cli.json("status")
        assert report["mode"] == "foreground" and report["running"]
        assert cli.state().server.pid == proc.pid  # type: ignore[union-attr]
        # `down` stops it with SIGTERM, as a container runtime would.
        assert cli.json("down")["stopped"] == [f"server (pid {proc.pid})"]
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    # Not a terminal: the key goes to the credentials file, not into the log.
    assert load_credentials(cli.home)["api_key"] not in out
    assert not (cli.home / "run" / "state.json").exists()
    assert reachable(ray_cluster)


def test_port_in_use_and_unreachable_ray_fail_clearly(cli: Cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli.run("up", "--port", str(port), "--ray-address", "127.0.0.1:1")
    assert res.returncode == 1
    assert "already in use" in res.stderr and "--port" in res.stderr

    err = cli.json(
        "up", "--port", str(free_port()), "--ray-address", f"127.0.0.1:{free_port()}", rc=1
    )
    assert err["error"]["code"] == "up_failed"
    assert "cannot reach the Ray cluster" in err["error"]["message"]
    # Checked before anything was created: no state, no database, no key.
    assert not (cli.home / "run" / "state.json").exists()
    assert not (cli.home / "credentials.json").exists()
    assert not (cli.home / "gureum.db").exists()


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (migrated by `up` itself), dropped afterwards."""
    if not PG_URL:
        pytest.skip("GUREUM_TEST_DATABASE_URL is not set")
    admin_url = make_url(PG_URL).render_as_string(hide_password=False)
    name = f"gureum_up_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_up_on_postgresql(cli: Cli, ray_cluster: str, empty_pg_database: str) -> None:
    up = cli.json(
        "up",
        "--port",
        str(free_port()),
        "--database-url",
        empty_pg_database,
        "--artifacts",
        f"file://{cli.home / 'blobs'}",
        "--ray-address",
        ray_cluster,
    )
    assert up["status"] == "started" and up["database"].startswith("postgresql+psycopg://")
    assert _whoami(up["url"], up["api_key"])["workspace"] == "default"
    report = cli.json("status")
    assert report["parts"]["database"]["ok"] and report["parts"]["artifacts"]["ok"]
    assert not (cli.home / "gureum.db").exists()
    assert cli.json("down")["status"] == "stopped"
