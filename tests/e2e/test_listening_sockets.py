"""A closed network: a cloud `gureum up` starts (its own Ray head, a served endpoint, so Ray
Serve's HAProxy and a replica run) listens on loopback only, and keeps its files private.

The cloud is the one `gureum demo --quick` builds on a fresh home, the way a newcomer starts
one: every TCP socket any of its processes listens on is listed and must be on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
import psutil
import pytest

from gureum.compute.local_ray import RayHead, haproxy_dir
from tests.conftest import free_port
from tests.e2e.test_up_down import GUREUM, Cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Ray Serve 2.60 opens each replica's inter-deployment gRPC server on "[::]:0" (hard-coded in
# ray.serve._private.replica): the one listener gureum cannot move. It carries Ray's token
# interceptor, so with token auth on it answers nothing without the cluster's token.
REPLICA_GRPC = "/ray.serve.ASGIService/HandleRequest"
REQUEST_TIMEOUT_S = 2


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        host = self.host.removeprefix("::ffff:")  # an IPv4 address on a dual-stack socket
        return ipaddress.ip_address(host).is_loopback

    @property
    def serve_replica(self) -> bool:
        return self.name.startswith("ray::ServeReplica")


@pytest.fixture
def demo_cloud(tmp_path: Path) -> Iterator[tuple[Cli, subprocess.CompletedProcess[str]]]:
    """The cloud `gureum demo --quick` leaves running, and the demo's outcome (checked by the
    test after the sockets, which are listed whether or not the demo's calls succeeded)."""
    cli = Cli(tmp_path / "home")
    env = {
        "GUREUM_SERVE_PORT": str(free_port()),
        "GUREUM_DATA_PLANE_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    try:
        yield cli, cli_run(cli, env, "demo", "--port", str(free_port()), "--quick", "-o", "json")
    finally:
        cli.run("down")


def cli_run(cli: Cli, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GUREUM, *args],
        env={**cli.env(), **extra},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def cloud_processes(head: RayHead, server_pid: int) -> list[psutil.Process]:
    """Every process of the head's session and of the server's (workers, HAProxy included)."""
    sessions = {head.session_id, os.getsid(server_pid)}
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions:
                out.append(proc)
        except (OSError, psutil.Error):
            continue
    return out


def listeners(procs: list[psutil.Process]) -> list[Listener]:
    found = []
    for proc in procs:
        try:
            name = " ".join(proc.cmdline())[:100] or proc.name()
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append(Listener(proc.pid, name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def refuses_without_token(port: int) -> bool:
    """An unauthenticated call to the replica's gRPC service is refused by Ray's token check."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(REPLICA_GRPC)
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def slow_headers_answer(url: str) -> tuple[bytes, float]:
    """What HAProxy answers a client that starts a request and never finishes its headers."""
    parsed = urlsplit(url)
    assert parsed.hostname is not None and parsed.port is not None
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        answer = sock.recv(4096)
        return answer, time.monotonic() - started


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_a_started_cloud_listens_on_loopback_only(
    demo_cloud: tuple[Cli, subprocess.CompletedProcess[str]],
) -> None:
    cli, demo = demo_cloud
    state = cli.state()
    assert state.server is not None and state.ray is not None and state.ray.head is not None
    head = state.ray.head

    found = listeners(cloud_processes(head, state.server.pid))
    names = " ".join(sorted({x.name for x in found}))
    for part in ("gcs_server", "raylet", "haproxy", "ServeReplica", "ProxyActor"):
        assert part in names, f"no listener of {part} found; the cloud is not all up: {names}"
    exposed = [x for x in found if not x.loopback]
    # The only exception: the replicas' inter-deployment gRPC ports, guarded by Ray's token.
    unguarded = [x for x in exposed if not (x.serve_replica and refuses_without_token(x.port))]
    assert unguarded == [], "\n".join(
        f"{x.name} (pid {x.pid}) on {x.host}:{x.port}" for x in unguarded
    )
    assert head.address.startswith("127.0.0.1:")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    result = json.loads(demo.stdout)
    assert result["endpoint"]["state"] == "ready"

    # A client that never finishes its request head is cut off after the request timeout.
    answer, waited = slow_headers_answer(result["endpoint"]["url"])
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert REQUEST_TIMEOUT_S - 0.5 < waited < REQUEST_TIMEOUT_S + 5

    # HAProxy's admin socket lies in a folder only gureum's user may enter, and is 0600.
    folder = haproxy_dir(head.temp_dir)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    sockets = list(folder.glob("*/admin.sock"))
    assert sockets and all(private(s) for s in sockets)

    # gureum's state is private: the home, the database, credentials, Ray's token, logs,
    # run state and every artifact the platform wrote (the demo's dataset and model).
    home = cli.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("gureum.db", "credentials.json", "ray-token", "run", "run/state.json", "logs"):
        assert private(home / name), name
    artifacts = list((home / "artifacts").rglob("*"))
    assert len(artifacts) > 5
    assert [p for p in artifacts if not private(p)] == []
