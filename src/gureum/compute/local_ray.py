"""A local Ray head for one machine, started detached.

The head runs in a session of its own, so restarting or stopping the control plane never
takes running jobs down with it, and `gureum down` can stop exactly this head: the processes
in its session. We never call `ray stop`, which kills every Ray on the machine, and never
use Ray's default port 6379, which other services (Redis) commonly hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from pydantic import BaseModel

from gureum.local.procs import cmdline, free_port, port_open, session_members, tail, terminate

START_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
# Ray's unix socket paths must fit in 107 bytes, so its temp dir has to stay short.
TEMP_ROOT = Path("/tmp")  # noqa: S108


class RayStartError(RuntimeError):
    pass


class RayHead(BaseModel):
    """What we need to find a head again: its address, session, temp dir and GCS port."""

    address: str
    session_id: int
    temp_dir: str
    gcs_port: int


def default_temp_dir(home: Path) -> Path:
    """A short temp dir, one per GUREUM_HOME and user, so two clouds never share one."""
    digest = hashlib.sha256(f"{os.getuid()}:{home.resolve()}".encode()).hexdigest()[:10]
    return TEMP_ROOT / f"gureum-ray-{digest}"


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RayStartError("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def parse_address(address: str) -> tuple[str, int] | None:
    """host and port of ``[scheme://]host:port``; None for forms like ``auto``."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def reachable(address: str, timeout: float = 1.0) -> bool:
    """True when the head's GCS (or Ray client server) port accepts connections."""
    parsed = parse_address(address)
    return parsed is not None and port_open(*parsed, timeout=timeout)


def head_env() -> dict[str, str]:
    """The environment every Ray process of the head inherits (workers included)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(LOCAL_AUTH)
    return env


INGRESS_RANGE = 100
# A head we start runs without Ray's token authentication, and so do the drivers that join it
# (the server, tests): otherwise a token file some other Ray program left in ~/.ray makes
# `ray start` demand a token that our drivers do not send.
LOCAL_AUTH = {"RAY_AUTH_MODE": "disabled"}


def haproxy_dir(temp_dir: Path | str) -> Path:
    """HAProxy's socket path must stay under 97 characters and Ray Serve nests it under a
    56-character folder: a short folder of its own, named after the head's."""
    digest = hashlib.sha256(str(temp_dir).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"gureum-hp-{digest}"


def serve_env(temp_dir: Path) -> dict[str, str]:
    """Ray Serve's fast data plane (HAProxy in front of the replicas, see DESIGN.md), with its
    files and side ports made private to this head so that several heads share a machine."""
    haproxy = haproxy_dir(temp_dir)
    metrics_port, stats_port, proxy_http, proxy_grpc = _free_ports(4)
    # Replicas listen on ports of a range HAProxy is told about; two heads on one machine
    # with the same range would route into each other's replicas. A range of their own.
    http_base = random.randrange(20_000, 29_000, INGRESS_RANGE)
    grpc_base = http_base + 10_000
    return {
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http_base + INGRESS_RANGE - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc_base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc_base + INGRESS_RANGE - 1),
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        # HAProxy's backup server (Ray Serve's own proxy) would otherwise be 8500 for every
        # head, shared through SO_REUSEPORT: requests could land in another local cluster.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(proxy_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(proxy_grpc),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
    }


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all sockets are held open until every port is chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _start_command(
    temp_dir: Path, gcs_port: int, num_cpus: int | None, object_store_memory: int | None
) -> list[str]:
    cmd = [
        ray_executable(),
        "start",
        "--head",
        f"--port={gcs_port}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    # Every port Ray would otherwise take at a fixed default gets a free one, so several
    # heads (two clouds, a test session) can share a machine.
    flags = (
        "--dashboard-port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    )
    cmd += [f"{flag}={port}" for flag, port in zip(flags, _free_ports(len(flags)), strict=True)]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if object_store_memory is not None:
        cmd.append(f"--object-store-memory={object_store_memory}")
    return cmd


def start_head(
    temp_dir: Path,
    log_path: Path,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    timeout: float = START_TIMEOUT,
) -> RayHead:
    """Start a head in a new session and return once it accepts connections."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gcs_port = free_port()
    cmd = _start_command(temp_dir, gcs_port, num_cpus, object_store_memory)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env={**head_env(), **serve_env(temp_dir)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = RayHead(
        address=f"127.0.0.1:{gcs_port}",
        session_id=proc.pid,
        temp_dir=str(temp_dir),
        gcs_port=gcs_port,
    )
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            raise RayStartError(
                f"`ray start` failed (exit {rc}); see {log_path}:\n{tail(log_path, offset)}"
            )
        if not _wait_reachable(head.address, 10.0):
            raise RayStartError(f"the Ray head did not answer on port {gcs_port}; see {log_path}")
    except subprocess.TimeoutExpired as exc:
        _kill_session(head)
        raise RayStartError(f"`ray start` took longer than {timeout:.0f}s; see {log_path}") from exc
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: leave no half-started head behind.
        _kill_session(head)
        raise
    return head.model_copy(update={"address": _recorded_address(temp_dir) or head.address})


def _wait_reachable(address: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not reachable(address, timeout=0.5):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _recorded_address(temp_dir: Path) -> str | None:
    """The GCS address Ray itself wrote for this head (it may use the node's IP)."""
    try:
        text = (temp_dir / "ray_current_cluster").read_text().strip()
    except OSError:
        return None
    return text or None


def head_processes(head: RayHead) -> list[psutil.Process]:
    """The live processes of ``head``; empty if it is gone or its session id was reused.

    The session counts as this head's only while one of its processes still names the
    head's temp dir on its command line (the GCS, raylet and monitors all do).
    """
    members = session_members(head.session_id)
    if not any(head.temp_dir in cmdline(p) for p in members):
        return []
    return members


def head_alive(head: RayHead) -> bool:
    return bool(head_processes(head)) and reachable(head.address)


def _kill_session(head: RayHead) -> None:
    terminate(session_members(head.session_id), 2.0)


def stop_head(head: RayHead, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop exactly this head's processes; False if there was nothing of it left to stop.

    Like `ray stop`, the raylet goes first (so workers wind down with it) and the GCS last.
    """
    procs = head_processes(head)
    if not procs:
        return False
    first = [p for p in procs if "raylet" in cmdline(p).split(" ", 1)[0]]
    last = [p for p in procs if "gcs_server" in cmdline(p).split(" ", 1)[0]]
    middle = [p for p in procs if p not in first and p not in last]
    for group in (first, middle, last):
        terminate(group, timeout / 3)
    terminate(session_members(head.session_id), 1.0)
    return True


def remove_temp_dir(head: RayHead) -> None:
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    shutil.rmtree(haproxy_dir(head.temp_dir), ignore_errors=True)
